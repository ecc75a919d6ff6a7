/* nn_par: how the CPU kernels use several cores.
 *
 * OpenBLAS runs single-threaded; the kernels split their own work across T
 * OpenMP threads, each taking a fixed, contiguous share decided by T alone
 * (never by timing), so results are bit-identical for a given T.  One level
 * of threads, owned by us, instead of OpenBLAS's pool nested under ours:
 * OpenBLAS's threads spin on sched_yield between calls, and the many small
 * GEMMs of a convolutional network spent more time there than computing.
 *
 * nn_par_set_threads sets the process's thread count once, before models are
 * built (a model sizes its per-thread scratch when it is built); it is the one
 * process-wide setting of the engine, like OpenBLAS's own.
 *
 * The kernels run with denormals flushed to zero (x86 MXCSR FTZ and DAZ), as
 * TensorFlow's and XLA's CPU thread pools do.  Adam's moments of a rarely
 * touched row decay geometrically into the denormal range, where every
 * multiply, square root and divide takes a microcode assist: a sparse confA
 * step spent 40 % of its time there.  Values that small carry no signal a
 * float32 network can use.  nn_par_fp_enter switches the calling thread and
 * the OpenMP threads; nn_par_fp_leave gives the calling thread back its own
 * mode (the OpenMP threads run nothing but kernels, and keep it). */
#ifndef CDS_NN_PAR_H
#define CDS_NN_PAR_H

#include <cblas.h>

/* Sets T (at least 1) for OpenMP and makes OpenBLAS single-threaded. */
void nn_par_set_threads(int t);
int nn_par_threads(void);
/* The calling thread's floating-point mode, saved by nn_par_fp_enter. */
typedef struct nn_par_fp {
    unsigned int csr;
} nn_par_fp;
void nn_par_fp_enter(nn_par_fp *saved);
void nn_par_fp_leave(const nn_par_fp *saved);
/* The share [*lo, *hi) of n items that thread `id` of `t` takes: contiguous,
 * sizes differing by at most `align`-sized blocks. */
void nn_par_share(long n, int id, int t, long align, long *lo, long *hi);
/* C = alpha·op(A)·op(B) + beta·C (row-major), split into row blocks of C (or
 * column blocks when C has fewer rows than threads) across the threads. */
void nn_par_sgemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif
