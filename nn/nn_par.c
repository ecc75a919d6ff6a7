/* nn_par: thread count and a GEMM split across threads (see nn_par.h).
 *
 * nn_par_sgemm gives each thread a block of rows of C (columns when C is
 * short and wide), so every element of C is computed by exactly one
 * single-threaded sgemm over the whole K: the sum order per element does not
 * depend on the thread count beyond which block an element falls in. */
#include "nn_kern_cpu.h"
#include "nn_par.h"

#include <omp.h>
#ifdef __SSE__
#include <xmmintrin.h>
/* MXCSR bits: flush-to-zero (results) and denormals-are-zero (inputs). */
#define FP_FLUSH 0x8040u
#endif

void nn_par_set_threads(int t)
{
    if (t < 1)
        t = 1;
    omp_set_num_threads(t);
    openblas_set_num_threads(1);
}

int nn_par_threads(void)
{
    return omp_get_max_threads();
}

void nn_par_fp_enter(nn_par_fp *saved)
{
#ifdef __SSE__
    saved->csr = _mm_getcsr();
    _mm_setcsr(saved->csr | FP_FLUSH);
    /* libgomp keeps its threads between regions, and threads it starts later
     * inherit the mode of the thread that starts them (POSIX): setting it on
     * every entry costs one empty region, microseconds against a step. */
#pragma omp parallel num_threads(nn_par_threads()) if (nn_par_threads() > 1)
    _mm_setcsr(_mm_getcsr() | FP_FLUSH);
#else
    saved->csr = 0;
#endif
}

void nn_par_fp_leave(const nn_par_fp *saved)
{
#ifdef __SSE__
    _mm_setcsr(saved->csr);
#else
    (void)saved;
#endif
}

void nn_par_share(long n, int id, int t, long align, long *lo, long *hi)
{
    long blocks = (n + align - 1) / align;
    long b0 = blocks * id / t, b1 = blocks * (id + 1) / t;
    *lo = b0 * align < n ? b0 * align : n;
    *hi = b1 * align < n ? b1 * align : n;
}

void nn_par_sgemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    int t = nn_par_threads();
    /* Small products are not worth waking threads for. */
    if (t == 1 || (double)M * N * K < 2e6) {
        cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int by_rows = M >= 4 * t;
#pragma omp parallel num_threads(t)
    {
        int id = omp_get_thread_num(), nt = omp_get_num_threads();
        long lo, hi;
        if (by_rows) {
            nn_par_share(M, id, nt, 8, &lo, &hi);
            if (hi > lo) {
                const float *a = ta == CblasNoTrans ? A + lo * (long)lda : A + lo;
                cblas_sgemm(CblasRowMajor, ta, tb, (int)(hi - lo), N, K, alpha, a, lda, B, ldb, beta,
                            C + lo * (long)ldc, ldc);
            }
        } else {
            nn_par_share(N, id, nt, 16, &lo, &hi);
            if (hi > lo) {
                const float *b = tb == CblasNoTrans ? B + lo : B + lo * (long)ldb;
                cblas_sgemm(CblasRowMajor, ta, tb, M, (int)(hi - lo), K, alpha, A, lda, b, ldb, beta, C + lo, ldc);
            }
        }
    }
}
