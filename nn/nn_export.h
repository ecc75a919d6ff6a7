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

#include <stdio.h>

#include "cds_err.h"
#include "nn_ckpt.h"

/* Writes c's model to path as safetensors: a temporary file beside it,
 * fsynced and renamed over path, so path is whole or untouched. */
int nn_export_safetensors(const nn_ckpt *c, const char *path, cds_err *err);

/* Writes the inference graph of the model in checkpoint ckpt_path to path
 * as ONNX (opset 17), the same way (nn_export_onnx.c has the graph). */
int nn_export_onnx(const char *ckpt_path, const char *path, cds_err *err);

/* The write both use: body(f, ctx) fills a temporary file beside path
 * (0, or -1 with errno), which is fsynced and renamed over path. */
int nn_export_write(const char *path, int (*body)(FILE *f, void *ctx), void *ctx, cds_err *err);

#endif
