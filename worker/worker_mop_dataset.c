/* worker_mop_dataset: what a MOP worker learns about a sweep's data.
 *
 * The sweep's dataset and shard count (from the sweep hash, pinned when the
 * sweep was created); the pinning of a sweep created while its dataset was
 * still loading (the dataset record, etl_dataset_record.h, says when it is
 * ready: its version is pinned in the sweep and leases flow; or failed: the
 * sweep is cancelled with the reason); and the shards whose worker has been
 * silent longer than the grace period, which this worker serves too since
 * DATA_ROOT is shared (their own worker, back, simply shares them again). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "etl_dataset_record.h"
#include "worker_mop_int.h"

int worker_mop_sweep_info(worker *w, const char *sweep, char *dataset, size_t n, int *shards, cds_err *err)
{
    json_t *o = NULL;
    int rc = WITH_RECONNECT(w, queue_sweep_get(w->q, sweep, &o, err));
    if (rc != 0)
        return -1;
    const char *ds = json_string_value(json_object_get(o, "dataset"));
    const char *k = json_string_value(json_object_get(o, "shards"));
    snprintf(dataset, n, "%s", ds ? ds : "");
    *shards = k ? atoi(k) : 0;
    json_decref(o);
    if (!dataset[0] || *shards < 1)
        return cds_errf(err, "sweep %s has no dataset or shard count in Redis", sweep);
    return 0;
}

/* A sweep created while its dataset was loading: once the dataset record
 * says ready, pin its version in the sweep (then leases flow); if it says
 * failed, cancel the sweep, with the reason. */
void worker_mop_pin_dataset(worker *w, const char *sweep)
{
    cds_err err;
    json_t *sw = NULL;
    if (queue_sweep_get(w->q, sweep, &sw, &err) != 0)
        return;
    const char *name = json_string_value(json_object_get(sw, "dataset")) ?: "";
    etl_dataset_record rec;
    if (etl_dataset_record_read(w->q, name, &rec, &err) == 0) {
        if (rec.state == ETL_DATASET_READY && *rec.version) {
            if (queue_sweep_set_field(w->q, sweep, "dataset_version", rec.version, &err) == 0)
                cds_logf(&w->log, CDS_LOG_INFO, "sweep %s: dataset %s is ready, version %.16s pinned", sweep, name,
                         rec.version);
        } else if (rec.state == ETL_DATASET_FAILED) {
            queue_sweep_set_field(w->q, sweep, "reason", "its dataset failed to load", &err);
            if (queue_sweep_set_state(w->q, sweep, "cancelled", &err) == 0)
                cds_logf(&w->log, CDS_LOG_WARN, "sweep %s cancelled: dataset %s failed to load", sweep, name);
        }
        etl_dataset_record_free(&rec);
    }
    json_decref(sw);
}

int worker_mop_orphan_shards(worker *w, int *shards, int max)
{
    if (w->cfg->shard_grace_ms <= 0)
        return 0;
    int found[64], nf = 0, n = 0;
    cds_err err;
    if (queue_mop_orphan_shards(w->q, w->cfg->shard_grace_ms, found, 64, &nf, &err) != 0)
        return 0;
    for (int i = 0; i < nf && n < max; i++)
        if (found[i] != w->cfg->shard && found[i] >= 0)
            shards[n++] = found[i];
    return n;
}
