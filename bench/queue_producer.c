/* queue_producer: the producing half of bench/queue.  Enqueues N no-op jobs in
 * pipelined batches, then waits until the queue's done counter reaches N, and
 * prints one line of key=value timings for the bench script to read:
 *   enqueue_s=… total_s=… jobs=…
 * usage: queue_producer URL PREFIX N BATCH */
#include <stdio.h>
#include <stdlib.h>

#include "cds_util.h"
#include "queue.h"

static long long done_count(queue_conn *q, cds_err *err)
{
    json_t *st = NULL;
    if (queue_stats(q, &st, err) != 0)
        return -1;
    json_t *c = json_object_get(json_object_get(json_object_get(st, "default"), "counters"), "done");
    long long v = c ? json_integer_value(c) : 0;
    json_decref(st);
    return v;
}

int main(int argc, char **argv)
{
    int64_t n, batch;
    if (argc != 5 || cds_parse_i64(argv[3], 1, 100000000, &n) != 0 || cds_parse_i64(argv[4], 1, 10000, &batch) != 0) {
        fprintf(stderr, "usage: queue_producer URL PREFIX N BATCH\n");
        return 2;
    }
    cds_err err;
    queue_opts o = {.url = argv[1], .prefix = argv[2], .writes = 1};
    queue_conn *q = queue_connect(&o, &err);
    if (!q) {
        fprintf(stderr, "queue_producer: %s\n", err.msg);
        queue_close(q);
        return 2;
    }
    queue_job_spec *specs = calloc((size_t)batch, sizeof *specs);
    queue_enqueued *out = calloc((size_t)batch, sizeof *out);
    for (int64_t i = 0; i < batch; i++) {
        queue_job_spec_init(&specs[i]);
        specs[i].type = "diag.noop";
    }
    int64_t t0 = cds_mono_ms();
    for (int64_t done = 0; done < n; done += batch) {
        size_t k = (size_t)(n - done < batch ? n - done : batch);
        if (queue_enqueue(q, specs, k, out, &err) != 0) {
            fprintf(stderr, "queue_producer: %s\n", err.msg);
            return 1;
        }
    }
    int64_t t1 = cds_mono_ms();
    long long d;
    while ((d = done_count(q, &err)) >= 0 && d < n)
        cds_sleep_ms(2);
    if (d < 0) {
        fprintf(stderr, "queue_producer: %s\n", err.msg);
        return 1;
    }
    int64_t t2 = cds_mono_ms();
    printf("enqueue_s=%.3f total_s=%.3f jobs=%lld\n", (t1 - t0) / 1000.0, (t2 - t0) / 1000.0, (long long)n);
    free(specs);
    free(out);
    queue_close(q);
    return 0;
}
