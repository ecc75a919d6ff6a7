/* nn_ops: every operation of the engine, run through the table of the
 * context's backend (see nn_ops.h and nn_backend.h).
 *
 * Each op first checks that its tensors and buffers are on the context's
 * device (tensors_on / bufs_on), then makes one call through the table.
 * Shapes are checked by the model when it is built, once, not here on every
 * step; nothing here allocates, locks or reads device memory. */
#include "nn_ops.h"

/* 0 when every non-NULL tensor is on the context's device, else -1 with a
 * message naming the op. */
static int tensors_on(const nn_ctx *c, const char *op, cds_err *err, int n, const nn_tensor *const *ts)
{
    for (int i = 0; i < n; i++)
        if (ts[i] && ts[i]->dev != c->dev)
            return cds_errf(err, "%s: a tensor on %s, the context on %s: move them to one device first", op,
                            nn_device_name(ts[i]->dev), nn_device_name(c->dev));
    return 0;
}

static int bufs_on(const nn_ctx *c, const char *op, cds_err *err, int n, const nn_buf *const *bs)
{
    for (int i = 0; i < n; i++)
        if (bs[i] && bs[i]->dev != c->dev)
            return cds_errf(err, "%s: a buffer on %s, the context on %s: move them to one device first", op,
                            nn_device_name(bs[i]->dev), nn_device_name(c->dev));
    return 0;
}

#define ON_CTX(op, ...)                                                                                        \
    do {                                                                                                       \
        const nn_tensor *ts_[] = {__VA_ARGS__};                                                                \
        if (tensors_on(c, op, err, (int)(sizeof ts_ / sizeof ts_[0]), ts_) < 0)                                \
            return -1;                                                                                         \
    } while (0)

#define BUFS_ON_CTX(op, ...)                                                                                   \
    do {                                                                                                       \
        const nn_buf *bs_[] = {__VA_ARGS__};                                                                   \
        if (bufs_on(c, op, err, (int)(sizeof bs_ / sizeof bs_[0]), bs_) < 0)                                   \
            return -1;                                                                                         \
    } while (0)

static float *data_or_null(const nn_tensor *t)
{
    return t ? t->data : NULL;
}

size_t nn_op_conv2d_work(const nn_ctx *c, const nn_conv_geom *g)
{
    return c->be->conv2d_work(c, g);
}

size_t nn_op_sparse_plan_work(const nn_ctx *c, int N, int K)
{
    return c->be->sparse_plan_work(c, N, K);
}

int nn_op_linear_fwd(const nn_ctx *c, const nn_tensor *x, const nn_tensor *w, const nn_tensor *b, nn_tensor *y,
                     cds_err *err)
{
    ON_CTX("linear", x, w, b, y);
    c->be->linear_fwd(c, x->data, w->data, data_or_null(b), y->data, x->shape[0], w->shape[1], w->shape[0]);
    return 0;
}

int nn_op_linear_bwd(const nn_ctx *c, const nn_tensor *x, const nn_tensor *w, const nn_tensor *dy, nn_tensor *dx,
                     nn_tensor *dw, nn_tensor *db, cds_err *err)
{
    ON_CTX("linear backward", x, w, dy, dx, dw, db);
    c->be->linear_bwd(c, x->data, w->data, dy->data, data_or_null(dx), dw->data, data_or_null(db), x->shape[0],
                      w->shape[1], w->shape[0]);
    return 0;
}

int nn_op_sparse_plan(const nn_ctx *c, const nn_buf *idx, int N, int K, int dim, nn_buf *plan, cds_err *err)
{
    BUFS_ON_CTX("sparse plan", idx, plan);
    c->be->sparse_plan(c, idx->data, N, K, dim, plan->data);
    return 0;
}

int nn_op_sparse_linear_fwd(const nn_ctx *c, const nn_buf *plan, int N, const nn_tensor *w, const nn_tensor *b,
                            nn_tensor *y, cds_err *err)
{
    ON_CTX("sparse linear", w, b, y);
    BUFS_ON_CTX("sparse linear", plan);
    c->be->sparse_linear_fwd(c, plan->data, w->data, data_or_null(b), y->data, N, w->shape[1]);
    return 0;
}

int nn_op_sparse_linear_bwd(const nn_ctx *c, const nn_buf *idx, int N, int K, const nn_tensor *dy, nn_tensor *dw,
                            nn_tensor *db, cds_err *err)
{
    ON_CTX("sparse linear backward", dy, dw, db);
    BUFS_ON_CTX("sparse linear backward", idx);
    c->be->sparse_linear_bwd(c, idx->data, dy->data, dw->data, data_or_null(db), N, K, dw->shape[1]);
    return 0;
}

int nn_op_sparse_plan_rows(const nn_ctx *c, const nn_buf *plan, nn_buf *rows, size_t *n, cds_err *err)
{
    BUFS_ON_CTX("sparse plan rows", plan, rows);
    *n = c->be->sparse_plan_rows(c, plan->data, rows->data);
    return 0;
}

int nn_op_sparse_linear_bwd_rows(const nn_ctx *c, const nn_buf *plan, int N, const nn_tensor *dy, nn_tensor *dw,
                                 nn_tensor *db, cds_err *err)
{
    ON_CTX("sparse linear backward (rows)", dy, dw, db);
    BUFS_ON_CTX("sparse linear backward (rows)", plan);
    c->be->sparse_linear_bwd_rows(c, plan->data, dy->data, data_or_null(dw), data_or_null(db), N, dy->shape[1]);
    return 0;
}

int nn_op_conv2d_fwd(const nn_ctx *c, const nn_conv_geom *g, const nn_tensor *x, const nn_tensor *w,
                     const nn_tensor *b, nn_tensor *y, nn_buf *work, cds_err *err)
{
    ON_CTX("conv2d", x, w, b, y);
    BUFS_ON_CTX("conv2d", work);
    c->be->conv2d_fwd(c, g, x->data, w->data, data_or_null(b), y->data, work ? work->data : NULL);
    return 0;
}

int nn_op_conv2d_bwd(const nn_ctx *c, const nn_conv_geom *g, const nn_tensor *x, const nn_tensor *w,
                     const nn_tensor *dy, nn_tensor *dx, nn_tensor *dw, nn_tensor *db, nn_buf *work, cds_err *err)
{
    ON_CTX("conv2d backward", x, w, dy, dx, dw, db);
    BUFS_ON_CTX("conv2d backward", work);
    c->be->conv2d_bwd(c, g, x->data, w->data, dy->data, data_or_null(dx), dw->data, data_or_null(db),
                      work ? work->data : NULL);
    return 0;
}

int nn_op_maxpool_fwd(const nn_ctx *c, const nn_pool_geom *g, const nn_tensor *x, nn_tensor *y, nn_buf *argmax,
                      cds_err *err)
{
    ON_CTX("max-pool", x, y);
    BUFS_ON_CTX("max-pool", argmax);
    c->be->maxpool_fwd(c, g, x->data, y->data, argmax->data);
    return 0;
}

int nn_op_maxpool_bwd(const nn_ctx *c, const nn_pool_geom *g, const nn_buf *argmax, const nn_tensor *dy,
                      nn_tensor *dx, cds_err *err)
{
    ON_CTX("max-pool backward", dy, dx);
    BUFS_ON_CTX("max-pool backward", argmax);
    c->be->maxpool_bwd(c, g, argmax->data, dy->data, dx->data);
    return 0;
}

int nn_op_avgpool_fwd(const nn_ctx *c, const nn_pool_geom *g, const nn_tensor *x, nn_tensor *y, cds_err *err)
{
    ON_CTX("average-pool", x, y);
    c->be->avgpool_fwd(c, g, x->data, y->data);
    return 0;
}

int nn_op_avgpool_bwd(const nn_ctx *c, const nn_pool_geom *g, const nn_tensor *dy, nn_tensor *dx, cds_err *err)
{
    ON_CTX("average-pool backward", dy, dx);
    c->be->avgpool_bwd(c, g, dy->data, dx->data);
    return 0;
}

int nn_op_gap_fwd(const nn_ctx *c, const nn_tensor *x, nn_tensor *y, cds_err *err)
{
    ON_CTX("global average pool", x, y);
    c->be->gap_fwd(c, x->data, y->data, x->shape[0], x->shape[1], x->shape[2] * x->shape[3]);
    return 0;
}

int nn_op_gap_bwd(const nn_ctx *c, const nn_tensor *dy, nn_tensor *dx, cds_err *err)
{
    ON_CTX("global average pool backward", dy, dx);
    c->be->gap_bwd(c, dy->data, dx->data, dx->shape[0], dx->shape[1], dx->shape[2] * dx->shape[3]);
    return 0;
}

/* Spatial size per channel: 1 for [N, C], H·W for [N, C, H, W]. */
static int per_channel(const nn_tensor *x)
{
    return x->ndim > 2 ? x->shape[2] * x->shape[3] : 1;
}

int nn_op_bn_fwd(const nn_ctx *c, const nn_tensor *x, const nn_tensor *gamma, const nn_tensor *beta,
                 nn_tensor *run_mean, nn_tensor *run_var, nn_tensor *y, nn_buf *save, int train, float momentum,
                 float eps, cds_err *err)
{
    ON_CTX("batch norm", x, gamma, beta, run_mean, run_var, y);
    BUFS_ON_CTX("batch norm", save);
    int N = x->shape[0], C = x->shape[1], HW = per_channel(x);
    if (train)
        c->be->bn_fwd_train(c, x->data, gamma->data, beta->data, y->data, save->data, run_mean->data, run_var->data,
                            momentum, eps, N, C, HW);
    else
        c->be->bn_fwd_infer(c, x->data, gamma->data, beta->data, run_mean->data, run_var->data, y->data, eps, N, C,
                            HW);
    return 0;
}

int nn_op_bn_bwd(const nn_ctx *c, const nn_tensor *x, const nn_tensor *gamma, const nn_buf *save,
                 const nn_tensor *dy, nn_tensor *dx, nn_tensor *dgamma, nn_tensor *dbeta, cds_err *err)
{
    ON_CTX("batch norm backward", x, gamma, dy, dx, dgamma, dbeta);
    BUFS_ON_CTX("batch norm backward", save);
    int N = x->shape[0], C = x->shape[1], HW = per_channel(x);
    c->be->bn_bwd(c, x->data, gamma->data, save->data, dy->data, data_or_null(dx), dgamma->data, dbeta->data, N, C,
                  HW);
    return 0;
}

int nn_op_relu_fwd(const nn_ctx *c, const nn_tensor *x, nn_tensor *y, cds_err *err)
{
    ON_CTX("relu", x, y);
    c->be->relu_fwd(c, x->data, y->data, x->n);
    return 0;
}

int nn_op_relu_bwd(const nn_ctx *c, const nn_tensor *y, const nn_tensor *dy, nn_tensor *dx, cds_err *err)
{
    ON_CTX("relu backward", y, dy, dx);
    c->be->relu_bwd(c, y->data, dy->data, dx->data, y->n);
    return 0;
}

int nn_op_add_fwd(const nn_ctx *c, const nn_tensor *a, const nn_tensor *b, nn_tensor *y, cds_err *err)
{
    ON_CTX("add", a, b, y);
    c->be->add_fwd(c, a->data, b->data, y->data, a->n);
    return 0;
}

int nn_op_dropout_fwd(const nn_ctx *c, const nn_tensor *x, nn_tensor *y, nn_buf *mask, float p, uint64_t seed,
                      uint64_t first, cds_err *err)
{
    ON_CTX("dropout", x, y);
    BUFS_ON_CTX("dropout", mask);
    c->be->dropout_fwd(c, x->data, y->data, mask->data, p, seed, first, x->n);
    return 0;
}

int nn_op_u8_normalize(const nn_ctx *c, const nn_buf *raw, const nn_buf *lut, nn_tensor *y, int n, int C, int64_t P,
                       int channels_last, cds_err *err)
{
    ON_CTX("uint8 normalisation", y);
    BUFS_ON_CTX("uint8 normalisation", raw, lut);
    if (y->n < (size_t)n * (size_t)C * (size_t)P || raw->bytes < (size_t)n * (size_t)C * (size_t)P ||
        lut->bytes < (size_t)C * 256 * sizeof(float))
        return cds_errf(err, "uint8 normalisation: %d rows of %d x %lld values do not fit the buffers", n, C,
                        (long long)P);
    c->be->u8_normalize(c, raw->data, lut->data, y->data, n, C, P, channels_last);
    return 0;
}

int nn_op_dropout_bwd(const nn_ctx *c, const nn_buf *mask, const nn_tensor *dy, nn_tensor *dx, float p,
                      cds_err *err)
{
    ON_CTX("dropout backward", dy, dx);
    BUFS_ON_CTX("dropout backward", mask);
    c->be->dropout_bwd(c, mask->data, dy->data, dx->data, p, dy->n);
    return 0;
}

int nn_op_acc(const nn_ctx *c, const nn_tensor *dy, nn_tensor *dx, cds_err *err)
{
    ON_CTX("accumulate", dy, dx);
    c->be->acc(c, dy->data, dx->data, dy->n);
    return 0;
}

int nn_op_zero(const nn_ctx *c, nn_tensor *t, cds_err *err)
{
    ON_CTX("zero", t);
    c->be->memset(c, t->data, 0, t->n * sizeof(float));
    return 0;
}

int nn_op_softmax_xent(const nn_ctx *c, const nn_tensor *logits, const nn_buf *labels, nn_tensor *dlogits,
                       nn_buf *metrics, cds_err *err)
{
    ON_CTX("softmax cross-entropy", logits, dlogits);
    BUFS_ON_CTX("softmax cross-entropy", labels, metrics);
    c->be->softmax_xent(c, logits->data, labels->data, data_or_null(dlogits), logits->shape[0], logits->shape[1],
                        metrics->data);
    return 0;
}

int nn_op_sumsq(const nn_ctx *c, const nn_tensor *w, nn_buf *metrics, cds_err *err)
{
    ON_CTX("sum of squares", w);
    BUFS_ON_CTX("sum of squares", metrics);
    c->be->sumsq(c, w->data, w->n, &((nn_step_metrics *)metrics->data)->sumsq);
    return 0;
}

int nn_op_metrics_fold(const nn_ctx *c, const nn_buf *metrics, nn_buf *acc, int n, double l2, int64_t step,
                       cds_err *err)
{
    BUFS_ON_CTX("metrics", metrics, acc);
    c->be->metrics_fold(c, metrics->data, acc->data, n, l2, step);
    return 0;
}

int nn_op_sgd_step(const nn_ctx *c, nn_tensor *w, const nn_tensor *g, nn_tensor *buf, float lr, float momentum,
                   float l2, cds_err *err)
{
    ON_CTX("sgd step", w, g, buf);
    c->be->sgd_step(c, w->data, g->data, buf->data, w->n, lr, momentum, l2);
    return 0;
}

int nn_op_adam_step(const nn_ctx *c, nn_tensor *w, const nn_tensor *g, nn_tensor *m, nn_tensor *v, float lr,
                    float beta1, float beta2, float eps, float l2, long t, cds_err *err)
{
    ON_CTX("adam step", w, g, m, v);
    c->be->adam_step(c, w->data, g->data, m->data, v->data, w->n, lr, beta1, beta2, eps, l2, t);
    return 0;
}

/* Columns of w taken as rows × cols: 2-D, or one column. */
static size_t row_cols(const nn_tensor *w)
{
    return w->ndim == 2 ? (size_t)w->shape[1] : 1;
}

int nn_op_sgd_rows_step(const nn_ctx *c, nn_tensor *w, const nn_row_grad *g, nn_tensor *buf, float lr,
                        float momentum, float l2, cds_err *err)
{
    ON_CTX("sgd step", w, buf);
    size_t cols = row_cols(w);
    c->be->sgd_rows_step(c, w->data, g, w->n / cols, cols, buf->data, lr, momentum, l2);
    return 0;
}

int nn_op_adam_rows_step(const nn_ctx *c, nn_tensor *w, const nn_row_grad *g, nn_tensor *m, nn_tensor *v, float lr,
                         float beta1, float beta2, float eps, float l2, long t, cds_err *err)
{
    ON_CTX("adam step", w, m, v);
    size_t cols = row_cols(w);
    c->be->adam_rows_step(c, w->data, g, w->n / cols, cols, m->data, v->data, lr, beta1, beta2, eps, l2, t);
    return 0;
}

int nn_op_lazy_adam_step(const nn_ctx *c, nn_tensor *w, const nn_row_grad *g, nn_tensor *m, nn_tensor *v, float lr,
                         float beta1, float beta2, float eps, float l2, long t, cds_err *err)
{
    ON_CTX("lazy adam step", w, m, v);
    c->be->lazy_adam_step(c, w->data, g, row_cols(w), m->data, v->data, lr, beta1, beta2, eps, l2, t);
    return 0;
}
