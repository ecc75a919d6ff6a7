/* kern_cpu_norm: batch normalisation over (N, HW) per channel, PyTorch's way.
 *
 * Layout is NCHW flattened to [N, C, HW]; channel c of sample n is the
 * contiguous plane x[(n·C + c)·HW .. +HW), and HW = 1 gives BatchNorm1d on
 * [N, C].  Each channel reduces M = N·HW values.
 *
 * Training forward, per channel:
 *   mean = Σx / M                    (summed in double)
 *   var  = Σ(x - mean)² / M          (biased, two passes: no cancellation)
 *   invstd = 1/sqrt(var + eps)
 *   y = (x - mean)·(γ·invstd) + β
 *   run_mean = (1-momentum)·run_mean + momentum·mean
 *   run_var  = (1-momentum)·run_var  + momentum·var·M/(M-1)
 * mean and invstd are saved (as float) for the backward pass.  y subtracts
 * the mean before scaling, rather than folding it into one multiply-add,
 * because x·scale + shift cancels badly when |mean| ≫ std.  With M = 1 the
 * unbiased variance is undefined (PyTorch refuses to train); here the biased
 * one (0) is used so the running variance decays instead of turning NaN.
 *
 * Backward of the training forward, with x̂ = (x - mean)·invstd and the sums
 * over the channel's M values taken in double:
 *   dβ += Σdy;   dγ += Σdy·x̂
 *   dx += γ·invstd·(dy - Σdy/M - x̂·Σ(dy·x̂)/M)
 * which is the full derivative through the batch statistics (the running
 * statistics do not take part).  dx, dγ and dβ may each be NULL.
 *
 * Inference: y = (x - run_mean)·γ/sqrt(run_var + eps) + β.
 *
 * Every channel is independent and visited in a fixed order, so results are
 * deterministic. */
#include <math.h>
#include <stddef.h>

#include "nn_kern_cpu.h"
#include "nn_par.h"

static const float *plane_c(const float *base, int n, int c, int C, int HW)
{
    return base + ((size_t)n * C + c) * HW;
}

static float *plane(float *base, int n, int c, int C, int HW)
{
    return base + ((size_t)n * C + c) * HW;
}

/* Each reduction keeps four partial sums (element i goes to partial i mod 4
 * within a plane) added together at the end, in a fixed order: one running
 * double sum is a dependent add per element, and on ResNet-18 the batch
 * norms spent most of their time waiting on that chain. */
static double sum4(const double acc[4])
{
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

static double channel_mean(const float *x, int c, int N, int C, int HW)
{
    double acc[4] = {0};
    for (int n = 0; n < N; n++) {
        const float *p = plane_c(x, n, c, C, HW);
        int i = 0;
        for (; i + 4 <= HW; i += 4)
            for (int k = 0; k < 4; k++)
                acc[k] += p[i + k];
        for (int k = 0; i < HW; i++, k++)
            acc[k] += p[i];
    }
    return sum4(acc) / ((double)N * HW);
}

/* Σ(x - mean)² / M: the biased variance. */
static double channel_var(const float *x, double mean, int c, int N, int C, int HW)
{
    double acc[4] = {0};
    for (int n = 0; n < N; n++) {
        const float *p = plane_c(x, n, c, C, HW);
        int i = 0;
        for (; i + 4 <= HW; i += 4)
            for (int k = 0; k < 4; k++) {
                double d = p[i + k] - mean;
                acc[k] += d * d;
            }
        for (int k = 0; i < HW; i++, k++) {
            double d = p[i] - mean;
            acc[k] += d * d;
        }
    }
    return sum4(acc) / ((double)N * HW);
}

/* y = (x - mean)·scale + shift over one channel. */
static void normalise_channel(const float *x, float *y, float mean, float scale, float shift, int c, int N, int C,
                              int HW)
{
    for (int n = 0; n < N; n++) {
        const float *p = plane_c(x, n, c, C, HW);
        float *q = plane(y, n, c, C, HW);
        for (int i = 0; i < HW; i++)
            q[i] = (p[i] - mean) * scale + shift;
    }
}

void nn_cpu_bn_fwd_train(const float *x, const float *gamma, const float *beta, float *y, float *save_mean,
                         float *save_invstd, float *run_mean, float *run_var, float momentum, float eps, int N, int C,
                         int HW)
{
    if (N <= 0 || C <= 0 || HW <= 0)
        return;
    double M = (double)N * HW;
    /* Channels are independent and each is done by one thread whole, so the
     * thread count cannot change a result. */
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if ((long)N * C * HW >= 65536)
    for (int c = 0; c < C; c++) {
        double mean = channel_mean(x, c, N, C, HW);
        double var = channel_var(x, mean, c, N, C, HW);
        double invstd = 1.0 / sqrt(var + (double)eps);
        save_mean[c] = (float)mean;
        save_invstd[c] = (float)invstd;
        normalise_channel(x, y, (float)mean, (float)(gamma[c] * invstd), beta[c], c, N, C, HW);

        double unbiased = M > 1.0 ? var * M / (M - 1.0) : var;
        run_mean[c] = (float)((1.0 - momentum) * run_mean[c] + (double)momentum * mean);
        run_var[c] = (float)((1.0 - momentum) * run_var[c] + (double)momentum * unbiased);
    }
}

void nn_cpu_bn_fwd_infer(const float *x, const float *gamma, const float *beta, const float *run_mean,
                         const float *run_var, float *y, float eps, int N, int C, int HW)
{
    if (N <= 0 || C <= 0 || HW <= 0)
        return;
    /* Channels are independent and each is done by one thread whole, so the
     * thread count cannot change a result. */
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if ((long)N * C * HW >= 65536)
    for (int c = 0; c < C; c++) {
        double invstd = 1.0 / sqrt((double)run_var[c] + (double)eps);
        normalise_channel(x, y, run_mean[c], (float)(gamma[c] * invstd), beta[c], c, N, C, HW);
    }
}

void nn_cpu_bn_bwd(const float *x, const float *gamma, const float *save_mean, const float *save_invstd,
                   const float *dy, float *dx, float *dgamma, float *dbeta, int N, int C, int HW)
{
    if (N <= 0 || C <= 0 || HW <= 0)
        return;
    double M = (double)N * HW;
    /* Channels are independent and each is done by one thread whole, so the
     * thread count cannot change a result. */
#pragma omp parallel for schedule(static) num_threads(nn_par_threads()) if ((long)N * C * HW >= 65536)
    for (int c = 0; c < C; c++) {
        float mean = save_mean[c], invstd = save_invstd[c];
        double a_dy[4] = {0}, a_dy_xhat[4] = {0};
        for (int n = 0; n < N; n++) {
            const float *xp = plane_c(x, n, c, C, HW), *dp = plane_c(dy, n, c, C, HW);
            int i = 0;
            for (; i + 4 <= HW; i += 4)
                for (int k = 0; k < 4; k++) {
                    double xhat = ((double)xp[i + k] - mean) * invstd;
                    a_dy[k] += dp[i + k];
                    a_dy_xhat[k] += dp[i + k] * xhat;
                }
            for (int k = 0; i < HW; i++, k++) {
                double xhat = ((double)xp[i] - mean) * invstd;
                a_dy[k] += dp[i];
                a_dy_xhat[k] += dp[i] * xhat;
            }
        }
        double sum_dy = sum4(a_dy), sum_dy_xhat = sum4(a_dy_xhat);
        if (dbeta)
            dbeta[c] += (float)sum_dy;
        if (dgamma)
            dgamma[c] += (float)sum_dy_xhat;
        if (!dx)
            continue;
        /* dx += k·(dy - mean_dy - x̂·mean_dy_xhat), with k = γ·invstd. */
        float k = (float)((double)gamma[c] * invstd);
        float mean_dy = (float)(sum_dy / M), mean_dy_xhat = (float)(sum_dy_xhat / M);
        for (int n = 0; n < N; n++) {
            const float *xp = plane_c(x, n, c, C, HW), *dp = plane_c(dy, n, c, C, HW);
            float *gp = plane(dx, n, c, C, HW);
            for (int i = 0; i < HW; i++) {
                float xhat = (xp[i] - mean) * invstd;
                gp[i] += k * (dp[i] - mean_dy - xhat * mean_dy_xhat);
            }
        }
    }
}
