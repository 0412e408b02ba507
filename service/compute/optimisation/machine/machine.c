/* The step machine: evaluates a traced objective of small problems without a torch call per
 * operation. A traced objective's graph (see __init__.py) becomes a tape of instructions over
 * small buffers; ``evaluate_*`` runs it and looks at the rows (finite values and gradients, the
 * tolerance) in one call. The op codes, the tape's field positions and WIDTH are given by machine.py
 * as -D definitions when it builds this file, so that they have one source. */
#include <math.h>
#include <stdint.h>
#include <tgmath.h>

#define MAXDIM 4

#define T double
#define NAME(x) x##_f64
#include "machine_body.h"
#undef T
#undef NAME

#define T float
#define NAME(x) x##_f32
#include "machine_body.h"
#undef T
#undef NAME
