/* kern_cpu_conv: what the two halves of the CPU convolution share: the
 * im2col path and the choice of path (kern_cpu_conv.c), and the implicit
 * per-tap GEMM path (kern_cpu_conv_taps.c).  Private to the CPU backend. */
#ifndef CDS_KERN_CPU_CONV_H
#define CDS_KERN_CPU_CONV_H

#ifndef CDS_NN_INTERNAL
#error "kern_cpu_conv.h is private to nn/: include nn_model.h, nn_train.h, nn_ops.h and the other public nn headers (a white-box test under tests/ adds c_args : nn_private_args)"
#endif

#include <stddef.h>

#include "nn_geom.h"

/* dst[i] += src[i] for n floats, in pieces of 8 (see copy_run in kern_cpu_conv.c). */
static inline void add_run(float *restrict dst, const float *restrict src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            dst[i + k] += src[i + k];
    for (; i < n; i++)
        dst[i] += src[i];
}

/* Threads the kernels split a geometry's work across (at least 1). */
int nn_cpu_conv_threads(const nn_conv_geom *g);

/* The per-tap path: the taps that see the map and their panels' rows
 * (decides conv_taps_pays), its scratch in floats, and its passes. */
void nn_cpu_conv_taps_count(const nn_conv_geom *g, int *used, size_t *rows);
size_t nn_cpu_conv_taps_work(const nn_conv_geom *g);
void nn_cpu_conv_taps_fwd(const nn_conv_geom *g, const float *x, const float *w, const float *b, float *y, float *work);
void nn_cpu_conv_taps_bwd(const nn_conv_geom *g, const float *x, const float *w, const float *dy, float *dx, float *dw,
                          float *work);

#endif
