/* kern_loss.c: being written; see nn_kern_cpu.h. */
#include "nn_kern_cpu.h"
