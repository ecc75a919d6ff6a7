/* nn_ops: device dispatch for every operation of the engine (see nn_ops.h).
 *
 * Each op first checks that its tensors agree on a device (same_device),
 * then runs the backend for it.  The CPU backend is nn_kern_cpu; the CUDA
 * backend will add its case to backend_for.  Shapes are checked by the model
 * when it is built, once, not here on every step. */
#include "nn_ops.h"
#include "nn_par.h"

#include <string.h>

/* Returns the device all non-NULL tensors share, or -1 with a message. */
static int same_device(const char *op, cds_err *err, int n, const nn_tensor *const *ts)
{
    int dev = -1;
    for (int i = 0; i < n; i++) {
        if (!ts[i])
            continue;
        if (dev >= 0 && (int)ts[i]->dev != dev)
            return cds_errf(err, "%s: tensors on %s and %s: move them to one device first", op,
                            nn_device_name((nn_device)dev), nn_device_name(ts[i]->dev));
        dev = (int)ts[i]->dev;
    }
    if (dev < 0)
        dev = NN_CPU;
    if (dev != NN_CPU)
        return cds_errf(err, "%s: no %s backend in this build: train on the cpu device", op,
                        nn_device_name((nn_device)dev));
    return dev;
}

#define ON_CPU(op, ...)                                                                                        \
    do {                                                                                                       \
        const nn_tensor *ts_[] = {__VA_ARGS__};                                                                \
        if (same_device(op, err, (int)(sizeof ts_ / sizeof ts_[0]), ts_) < 0)                                  \
            return -1;                                                                                         \
    } while (0)

static float *data_or_null(const nn_tensor *t)
{
    return t ? t->data : NULL;
}

int nn_op_linear_fwd(const nn_tensor *x, const nn_tensor *w, const nn_tensor *b, nn_tensor *y, cds_err *err)
{
    ON_CPU("linear", x, w, b, y);
    nn_cpu_linear_fwd(x->data, w->data, data_or_null(b), y->data, x->shape[0], w->shape[1], w->shape[0]);
    return 0;
}

int nn_op_linear_bwd(const nn_tensor *x, const nn_tensor *w, const nn_tensor *dy, nn_tensor *dx, nn_tensor *dw,
                     nn_tensor *db, cds_err *err)
{
    ON_CPU("linear backward", x, w, dy, dx, dw, db);
    nn_cpu_linear_bwd(x->data, w->data, dy->data, data_or_null(dx), dw->data, data_or_null(db), x->shape[0],
                      w->shape[1], w->shape[0]);
    return 0;
}

int nn_op_sparse_plan(const int32_t *idx, int N, int K, int dim, void *work, nn_sparse_plan *pl, cds_err *err)
{
    (void)err;
    nn_cpu_sparse_plan(pl, idx, N, K, dim, work);
    return 0;
}

int nn_op_sparse_linear_fwd(const nn_sparse_plan *pl, int N, const nn_tensor *w, const nn_tensor *b, nn_tensor *y,
                            cds_err *err)
{
    ON_CPU("sparse linear", w, b, y);
    nn_cpu_sparse_linear_fwd_rows(pl, w->data, data_or_null(b), y->data, N, w->shape[1]);
    return 0;
}

int nn_op_sparse_linear_bwd(const int32_t *idx, int N, int K, const nn_tensor *dy, nn_tensor *dw, nn_tensor *db,
                            cds_err *err)
{
    ON_CPU("sparse linear backward", dy, dw, db);
    nn_cpu_sparse_linear_bwd(idx, dy->data, dw->data, data_or_null(db), N, K, dw->shape[1]);
    return 0;
}

int nn_op_sparse_linear_bwd_rows(const nn_sparse_plan *pl, int N, const nn_tensor *dy, nn_tensor *dw, nn_tensor *db,
                                 cds_err *err)
{
    ON_CPU("sparse linear backward (rows)", dy, dw, db);
    nn_cpu_sparse_linear_bwd_rows(pl, dy->data, data_or_null(dw), data_or_null(db), N, dy->shape[1]);
    return 0;
}

int nn_op_conv2d_fwd(const nn_conv_geom *g, const nn_tensor *x, const nn_tensor *w, const nn_tensor *b, nn_tensor *y,
                     float *work, cds_err *err)
{
    ON_CPU("conv2d", x, w, b, y);
    nn_cpu_conv2d_fwd(g, x->data, w->data, data_or_null(b), y->data, work);
    return 0;
}

int nn_op_conv2d_bwd(const nn_conv_geom *g, const nn_tensor *x, const nn_tensor *w, const nn_tensor *dy,
                     nn_tensor *dx, nn_tensor *dw, nn_tensor *db, float *work, cds_err *err)
{
    ON_CPU("conv2d backward", x, w, dy, dx, dw, db);
    nn_cpu_conv2d_bwd(g, x->data, w->data, dy->data, data_or_null(dx), dw->data, data_or_null(db), work);
    return 0;
}

int nn_op_maxpool_fwd(const nn_pool_geom *g, const nn_tensor *x, nn_tensor *y, int32_t *argmax, cds_err *err)
{
    ON_CPU("max-pool", x, y);
    nn_cpu_maxpool_fwd(g, x->data, y->data, argmax);
    return 0;
}

int nn_op_maxpool_bwd(const nn_pool_geom *g, const int32_t *argmax, const nn_tensor *dy, nn_tensor *dx,
                      cds_err *err)
{
    ON_CPU("max-pool backward", dy, dx);
    nn_cpu_maxpool_bwd(g, argmax, dy->data, dx->data);
    return 0;
}

int nn_op_avgpool_fwd(const nn_pool_geom *g, const nn_tensor *x, nn_tensor *y, cds_err *err)
{
    ON_CPU("average-pool", x, y);
    nn_cpu_avgpool_fwd(g, x->data, y->data);
    return 0;
}

int nn_op_avgpool_bwd(const nn_pool_geom *g, const nn_tensor *dy, nn_tensor *dx, cds_err *err)
{
    ON_CPU("average-pool backward", dy, dx);
    nn_cpu_avgpool_bwd(g, dy->data, dx->data);
    return 0;
}

int nn_op_gap_fwd(const nn_tensor *x, nn_tensor *y, cds_err *err)
{
    ON_CPU("global average pool", x, y);
    nn_cpu_gap_fwd(x->data, y->data, x->shape[0], x->shape[1], x->shape[2] * x->shape[3]);
    return 0;
}

int nn_op_gap_bwd(const nn_tensor *dy, nn_tensor *dx, cds_err *err)
{
    ON_CPU("global average pool backward", dy, dx);
    nn_cpu_gap_bwd(dy->data, dx->data, dx->shape[0], dx->shape[1], dx->shape[2] * dx->shape[3]);
    return 0;
}

/* Spatial size per channel: 1 for [N, C], H·W for [N, C, H, W]. */
static int per_channel(const nn_tensor *x)
{
    return x->ndim > 2 ? x->shape[2] * x->shape[3] : 1;
}

int nn_op_bn_fwd(const nn_tensor *x, const nn_tensor *gamma, const nn_tensor *beta, nn_tensor *run_mean,
                 nn_tensor *run_var, nn_tensor *y, float *save, int train, float momentum, float eps, cds_err *err)
{
    ON_CPU("batch norm", x, gamma, beta, run_mean, run_var, y);
    int N = x->shape[0], C = x->shape[1], HW = per_channel(x);
    if (train)
        nn_cpu_bn_fwd_train(x->data, gamma->data, beta->data, y->data, save, save + C, run_mean->data, run_var->data,
                            momentum, eps, N, C, HW);
    else
        nn_cpu_bn_fwd_infer(x->data, gamma->data, beta->data, run_mean->data, run_var->data, y->data, eps, N, C, HW);
    return 0;
}

int nn_op_bn_bwd(const nn_tensor *x, const nn_tensor *gamma, const float *save, const nn_tensor *dy, nn_tensor *dx,
                 nn_tensor *dgamma, nn_tensor *dbeta, cds_err *err)
{
    ON_CPU("batch norm backward", x, gamma, dy, dx, dgamma, dbeta);
    int N = x->shape[0], C = x->shape[1], HW = per_channel(x);
    nn_cpu_bn_bwd(x->data, gamma->data, save, save + C, dy->data, data_or_null(dx), dgamma->data, dbeta->data, N, C,
                  HW);
    return 0;
}

int nn_op_relu_fwd(const nn_tensor *x, nn_tensor *y, cds_err *err)
{
    ON_CPU("relu", x, y);
    nn_cpu_relu_fwd(x->data, y->data, x->n);
    return 0;
}

int nn_op_relu_bwd(const nn_tensor *y, const nn_tensor *dy, nn_tensor *dx, cds_err *err)
{
    ON_CPU("relu backward", y, dy, dx);
    nn_cpu_relu_bwd(y->data, dy->data, dx->data, y->n);
    return 0;
}

int nn_op_add_fwd(const nn_tensor *a, const nn_tensor *b, nn_tensor *y, cds_err *err)
{
    ON_CPU("add", a, b, y);
    nn_cpu_add_fwd(a->data, b->data, y->data, a->n);
    return 0;
}

int nn_op_dropout_fwd(const nn_tensor *x, nn_tensor *y, uint8_t *mask, float p, uint64_t seed, cds_err *err)
{
    ON_CPU("dropout", x, y);
    nn_cpu_dropout_fwd(x->data, y->data, mask, p, seed, x->n);
    return 0;
}

int nn_op_dropout_bwd(const uint8_t *mask, const nn_tensor *dy, nn_tensor *dx, float p, cds_err *err)
{
    ON_CPU("dropout backward", dy, dx);
    nn_cpu_dropout_bwd(mask, dy->data, dx->data, p, dy->n);
    return 0;
}

int nn_op_acc(const nn_tensor *dy, nn_tensor *dx, cds_err *err)
{
    ON_CPU("accumulate", dy, dx);
    float *restrict d = dx->data;
    const float *restrict s = dy->data;
    size_t n = dy->n;
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if (n >= 65536)
    for (size_t i = 0; i < n; i++)
        d[i] += s[i];
    return 0;
}

int nn_op_zero(nn_tensor *t, cds_err *err)
{
    ON_CPU("zero", t);
    memset(t->data, 0, t->n * sizeof(float));
    return 0;
}

int nn_op_softmax_xent(const nn_tensor *logits, const int32_t *labels, nn_tensor *dlogits, double *loss, int *top1,
                       int *top5, cds_err *err)
{
    ON_CPU("softmax cross-entropy", logits, dlogits);
    *loss = nn_cpu_softmax_xent(logits->data, labels, data_or_null(dlogits), logits->shape[0], logits->shape[1], top1,
                                top5);
    return 0;
}

int nn_op_sgd_step(nn_tensor *w, const nn_tensor *g, nn_tensor *buf, float lr, float momentum, float l2,
                   cds_err *err)
{
    ON_CPU("sgd step", w, g, buf);
    nn_cpu_sgd_step(w->data, g->data, buf->data, w->n, lr, momentum, l2);
    return 0;
}

int nn_op_adam_step(nn_tensor *w, const nn_tensor *g, nn_tensor *m, nn_tensor *v, float lr, float beta1, float beta2,
                    float eps, float l2, long t, cds_err *err)
{
    ON_CPU("adam step", w, g, m, v);
    nn_cpu_adam_step(w->data, g->data, m->data, v->data, w->n, lr, beta1, beta2, eps, l2, t);
    return 0;
}

/* Columns of w taken as rows × cols: 2-D, or one column. */
static size_t row_cols(const nn_tensor *w)
{
    return w->ndim == 2 ? (size_t)w->shape[1] : 1;
}

int nn_op_sgd_rows_step(nn_tensor *w, const nn_row_grad *g, nn_tensor *buf, float lr, float momentum, float l2,
                        cds_err *err)
{
    ON_CPU("sgd step", w, buf);
    size_t cols = row_cols(w);
    nn_cpu_sgd_rows_step(w->data, g, w->n / cols, cols, buf->data, lr, momentum, l2);
    return 0;
}

int nn_op_adam_rows_step(nn_tensor *w, const nn_row_grad *g, nn_tensor *m, nn_tensor *v, float lr, float beta1,
                         float beta2, float eps, float l2, long t, cds_err *err)
{
    ON_CPU("adam step", w, m, v);
    size_t cols = row_cols(w);
    nn_cpu_adam_rows_step(w->data, g, w->n / cols, cols, m->data, v->data, lr, beta1, beta2, eps, l2, t);
    return 0;
}

int nn_op_lazy_adam_step(nn_tensor *w, const nn_row_grad *g, nn_tensor *m, nn_tensor *v, float lr, float beta1,
                         float beta2, float eps, float l2, long t, cds_err *err)
{
    ON_CPU("lazy adam step", w, m, v);
    nn_cpu_lazy_adam_step(w->data, g, row_cols(w), m->data, v->data, lr, beta1, beta2, eps, l2, t);
    return 0;
}

int nn_op_sumsq(const nn_tensor *w, double *out, cds_err *err)
{
    ON_CPU("sum of squares", w);
    *out = nn_cpu_sumsq(w->data, w->n);
    return 0;
}
