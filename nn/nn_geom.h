/* nn_geom: the geometry of convolutions and pooling windows, shared by every
 * backend and by the model that plans them.
 *
 * A geometry is filled once, when a model is built, for its largest batch;
 * the model then changes N alone per batch.  The init functions compute the
 * output size and refuse geometries whose output would be empty or whose
 * matrices would not fit the ints GEMM libraries take.  Two fields are the
 * CPU reference's own plan (threads, taps): nn_conv_geom_init fills them with
 * the rest, so sizing scratch (nn_op_conv2d_work) sees them, and another
 * backend ignores them.  Workspace sizes are asked of the backend through
 * nn_ops.h, since only it knows what scratch its kernels take. */
#ifndef CDS_NN_GEOM_H
#define CDS_NN_GEOM_H

/* ---- conv2d: square stride and padding, as every model here uses ---- */
typedef struct nn_conv_geom {
    int N, C, H, W;      /* input */
    int OC, KH, KW;      /* weight [OC, C, KH, KW] */
    int stride, pad;
    int OH, OW;          /* output; filled by nn_conv_geom_init */
    int threads;         /* threads the kernels split images across; set by nn_conv_geom_init from
                            nn_par_threads(), and what nn_cpu_conv2d_work sizes the scratch for */
    int taps;            /* 1: one GEMM per kernel tap (small maps), 0: im2col; set by nn_conv_geom_init
                            from the shapes (rule in kern_cpu_conv.c); tests flip it, before sizing the
                            scratch, to compare the two */
} nn_conv_geom;
/* Computes OH, OW; returns -1 when the output would be empty. */
int nn_conv_geom_init(nn_conv_geom *g);

/* ---- pooling: k×k window, square stride and padding ---- */
typedef struct nn_pool_geom {
    int N, C, H, W;
    int k, stride, pad;
    int OH, OW;          /* filled by nn_pool_geom_init (floor mode, as PyTorch and Keras 'valid') */
} nn_pool_geom;
/* Computes OH, OW; returns -1 when the output would be empty or pad > k/2
 * (PyTorch's rule: every window then holds a real element). */
int nn_pool_geom_init(nn_pool_geom *g);

#endif
