/* nn_export: a checkpoint's model in formats other tools load (DESIGN.md
 * §10, docs/export.md).
 *
 * safetensors, what PyTorch (safetensors.torch.load_file) and the Hugging
 * Face tools read: the model's weights and buffers under the checkpoint's
 * names, which are PyTorch's (docs/models.md: named_parameters() and the
 * batch-norm buffers), so load_state_dict(strict=True) takes them on the
 * matching torch module.  Training state (the optimiser's tensors, the
 * generator, the data position) stays in the checkpoint. */
#ifndef CDS_NN_EXPORT_H
#define CDS_NN_EXPORT_H

#include "cds_err.h"
#include "nn_ckpt.h"

/* Writes c's model to path as safetensors: a temporary file beside it,
 * fsynced and renamed over path, so path is whole or untouched. */
int nn_export_safetensors(const nn_ckpt *c, const char *path, cds_err *err);

#endif
