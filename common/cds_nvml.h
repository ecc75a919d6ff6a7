/* cds_nvml: one GPU's utilisation and memory through NVML (DESIGN.md §10),
 * for the resource records (cds_res) and the worker's metrics.
 *
 * libnvidia-ml.so.1 comes with the NVIDIA driver, not with the toolkit, so
 * it is loaded at run time (dlopen): the build needs no driver, and a
 * machine without one gets NULL from cds_nvml_open with one line saying
 * why, never a failed start.
 *
 * Which card: CUDA numbers the devices a process sees through
 * CUDA_VISIBLE_DEVICES, NVML every card of the machine.  So cuda:N is the
 * N-th entry of CUDA_VISIBLE_DEVICES when it is set: a UUID (GPU-...,
 * what jobs/workers-per-gpu.sh gives) names the card exactly; a number is
 * taken as NVML's index.  Unset, cuda:N is NVML's index N.  A number is
 * exact when CUDA_DEVICE_ORDER=PCI_BUS_ID or the cards are alike: CUDA
 * otherwise puts the fastest card first, NVML goes by PCI bus.
 *
 * What a sample is: the card's utilisation over NVML's last sample period
 * (1/6 s to 1 s, by product) and its memory in use, by every process on
 * the card (one worker per card makes it the worker's).  Every sample is
 * also added to a tally (count, summed utilisation, peak memory) that a
 * cds_nvml_mark reads back as the mean and the peak of the samples taken
 * since it: one mark at a time per handle, as the process's own resident
 * high-water mark in cds_res.  A handle may be sampled from several
 * threads (NVML is thread-safe; the tally has its own lock). */
#ifndef CDS_NVML_H
#define CDS_NVML_H

#include <stdint.h>

#include "cds_err.h"

#define CDS_NVML_LIBRARY "libnvidia-ml.so.1"

typedef struct cds_nvml cds_nvml;

typedef struct cds_nvml_sample {
    unsigned util_pct;  /* 0 to 100 */
    uint64_t mem_used;  /* bytes */
    uint64_t mem_total; /* bytes */
} cds_nvml_sample;

/* Where the tally stood when a piece of work began. */
typedef struct cds_nvml_mark {
    int64_t n;        /* samples so far */
    int64_t util_sum; /* their utilisation, summed */
} cds_nvml_mark;

/* NVML on CUDA device cuda_index of this process (CUDA_VISIBLE_DEVICES as
 * above), checked with one sample.  NULL with one line in err when the
 * library, the driver or the device is not there, or cannot be sampled. */
cds_nvml *cds_nvml_open(int cuda_index, cds_err *err);
/* The same with the library and CUDA_VISIBLE_DEVICES given (NULL: unset):
 * tests load a stand-in library. */
cds_nvml *cds_nvml_open_lib(const char *library, int cuda_index, const char *visible, cds_err *err);
void cds_nvml_close(cds_nvml *g);
/* The card, as the logs name it: its UUID, or "NVML device K". */
const char *cds_nvml_name(const cds_nvml *g);

/* One sample now, added to the tally; -1 with the line when NVML fails
 * (nothing is added then). */
int cds_nvml_sample_now(cds_nvml *g, cds_nvml_sample *s, cds_err *err);
/* Starts a mark: the tally's place, and its peak reset. */
void cds_nvml_mark_start(cds_nvml *g, cds_nvml_mark *m);
/* The mean utilisation (%) and peak memory (bytes) of the samples taken
 * since m: 1, or 0 when none was taken. */
int cds_nvml_since(cds_nvml *g, const cds_nvml_mark *m, double *util_pct, uint64_t *mem_peak);

#endif
