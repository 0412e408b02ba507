/* The step machine's body, included once per element type by machine.c: T is the element type
 * and NAME(x) gives each function its type's suffix. tgmath.h picks each maths function's
 * float or double version from T. */

/* One tape instruction's elementwise loop over a 4-d index space: out[i] = f(a[i], b[i], c[i]). */
#define LOOP4(BODY)                                                                          \
    for (int64_t i0 = 0; i0 < s[0]; i0++)                                                     \
        for (int64_t i1 = 0; i1 < s[1]; i1++)                                                 \
            for (int64_t i2 = 0; i2 < s[2]; i2++)                                             \
                for (int64_t i3 = 0; i3 < s[3]; i3++) {                                       \
                    T *o = out + i0 * os[0] + i1 * os[1] + i2 * os[2] + i3 * os[3];           \
                    const T x = a[i0 * as[0] + i1 * as[1] + i2 * as[2] + i3 * as[3]];         \
                    const T y = b ? b[i0 * bs[0] + i1 * bs[1] + i2 * bs[2] + i3 * bs[3]] : 0; \
                    const T z = c ? c[i0 * cs[0] + i1 * cs[1] + i2 * cs[2] + i3 * cs[3]] : 0; \
                    (void)y;                                                                  \
                    (void)z;                                                                  \
                    BODY;                                                                     \
                }

static T NAME(pow_scalar)(T x, T e) {
    /* torch's own special cases of pow(tensor, number), for the same roundings. */
    if (e == (T)2) return x * x;
    if (e == (T)3) return x * x * x;
    if (e == (T)0.5) return sqrt(x);
    if (e == (T)-0.5) return (T)1 / sqrt(x);
    if (e == (T)-1) return (T)1 / x;
    if (e == (T)-2) return (T)1 / (x * x);
    if (e == (T)0) return (T)1;
    return pow(x, e);
}

static T NAME(maximum)(T x, T y) { return (isnan(x) || isnan(y)) ? (T)NAN : (x > y ? x : y); }
static T NAME(minimum)(T x, T y) { return (isnan(x) || isnan(y)) ? (T)NAN : (x < y ? x : y); }

/* Runs the tape once: every instruction in order. */
static void NAME(execute)(const int64_t *tape, int64_t count, T **bufs, const double *params) {
    for (int64_t k = 0; k < count; k++) {
        const int64_t *in = tape + k * WIDTH;
        const int64_t op = in[F_OP];
        const int64_t *s = in + F_SHAPE, *os = in + F_OUT_STRIDES, *as = in + F_A_STRIDES;
        const int64_t *bs = in + F_B_STRIDES, *cs = in + F_C_STRIDES;
        T *out = bufs[in[F_OUT]] + in[F_OUT_OFFSET];
        const T *a = in[F_A] >= 0 ? bufs[in[F_A]] + in[F_A_OFFSET] : 0;
        const T *b = in[F_B] >= 0 ? bufs[in[F_B]] + in[F_B_OFFSET] : 0;
        const T *c = in[F_C] >= 0 ? bufs[in[F_C]] + in[F_C_OFFSET] : 0;
        const T p = (T)params[in[F_PARAM]];
        if (op == OP_SUM) {
            /* The first in[F_KEPT] dimensions are kept, the others summed, in row-major order. */
            int64_t kept = in[F_KEPT], size = 1, inner[MAXDIM], istride[MAXDIM], n = 0;
            for (int64_t d = kept; d < MAXDIM; d++) {
                inner[n] = s[d];
                istride[n] = as[d];
                size *= s[d];
                n++;
            }
            int64_t outer[MAXDIM] = {1, 1, 1, 1}, ostr[MAXDIM] = {0, 0, 0, 0}, astr[MAXDIM] = {0, 0, 0, 0};
            for (int64_t d = 0; d < kept; d++) {
                outer[MAXDIM - kept + d] = s[d];
                ostr[MAXDIM - kept + d] = os[d];
                astr[MAXDIM - kept + d] = as[d];
            }
            for (int64_t i0 = 0; i0 < outer[0]; i0++)
                for (int64_t i1 = 0; i1 < outer[1]; i1++)
                    for (int64_t i2 = 0; i2 < outer[2]; i2++)
                        for (int64_t i3 = 0; i3 < outer[3]; i3++) {
                            const T *base = a + i0 * astr[0] + i1 * astr[1] + i2 * astr[2] + i3 * astr[3];
                            T total = 0;
                            for (int64_t flat = 0; flat < size; flat++) {
                                int64_t rest = flat, offset = 0;
                                for (int64_t d = n - 1; d >= 0; d--) {
                                    offset += (rest % inner[d]) * istride[d];
                                    rest /= inner[d];
                                }
                                total += base[offset];
                            }
                            out[i0 * ostr[0] + i1 * ostr[1] + i2 * ostr[2] + i3 * ostr[3]] = total;
                        }
            continue;
        }
        switch (op) {
        case OP_FILL: {
            const T x = 0, y = 0, z = 0;
            (void)x, (void)y, (void)z;
            for (int64_t i0 = 0; i0 < s[0]; i0++)
                for (int64_t i1 = 0; i1 < s[1]; i1++)
                    for (int64_t i2 = 0; i2 < s[2]; i2++)
                        for (int64_t i3 = 0; i3 < s[3]; i3++)
                            out[i0 * os[0] + i1 * os[1] + i2 * os[2] + i3 * os[3]] = p;
            break;
        }
        case OP_COPY: LOOP4(*o = x) break;
        case OP_NEG: LOOP4(*o = -x) break;
        case OP_EXP: LOOP4(*o = exp(x)) break;
        case OP_LOG: LOOP4(*o = log(x)) break;
        case OP_SQRT: LOOP4(*o = sqrt(x)) break;
        case OP_RSQRT: LOOP4(*o = (T)1 / sqrt(x)) break;
        case OP_SIN: LOOP4(*o = sin(x)) break;
        case OP_COS: LOOP4(*o = cos(x)) break;
        case OP_TAN: LOOP4(*o = tan(x)) break;
        case OP_TANH: LOOP4(*o = tanh(x)) break;
        case OP_SIGMOID: LOOP4(*o = (T)1 / ((T)1 + exp(-x))) break;
        case OP_ABS: LOOP4(*o = fabs(x)) break;
        case OP_SIGN: LOOP4(*o = (T)((x > 0) - (x < 0))) break;
        case OP_RECIPROCAL: LOOP4(*o = (T)1 / x) break;
        case OP_LOG1P: LOOP4(*o = log1p(x)) break;
        case OP_EXPM1: LOOP4(*o = expm1(x)) break;
        case OP_ATAN: LOOP4(*o = atan(x)) break;
        case OP_SINH: LOOP4(*o = sinh(x)) break;
        case OP_COSH: LOOP4(*o = cosh(x)) break;
        case OP_POW_SCALAR: LOOP4(*o = NAME(pow_scalar)(x, p)) break;
        case OP_ADD: LOOP4(*o = x + y) break;
        case OP_SUB: LOOP4(*o = x - y) break;
        case OP_MUL: LOOP4(*o = x * y) break;
        case OP_DIV: LOOP4(*o = x / y) break;
        case OP_ADD_SCALED: LOOP4(*o = x + p * y) break;
        case OP_POW: LOOP4(*o = pow(x, y)) break;
        case OP_MAXIMUM: LOOP4(*o = NAME(maximum)(x, y)) break;
        case OP_MINIMUM: LOOP4(*o = NAME(minimum)(x, y)) break;
        case OP_GT: LOOP4(*o = (T)(x > y)) break;
        case OP_LT: LOOP4(*o = (T)(x < y)) break;
        case OP_GE: LOOP4(*o = (T)(x >= y)) break;
        case OP_LE: LOOP4(*o = (T)(x <= y)) break;
        case OP_EQ: LOOP4(*o = (T)(x == y)) break;
        case OP_NE: LOOP4(*o = (T)(x != y)) break;
        case OP_TANH_BACKWARD: LOOP4(*o = x * ((T)1 - y * y)) break;
        case OP_SIGMOID_BACKWARD: LOOP4(*o = x * ((T)1 - y) * y) break;
        case OP_WHERE: LOOP4(*o = x != 0 ? y : z) break;
        default: break;
        }
    }
}

/* Checks the rows in ``active`` (all when NULL): bit 1 when a value or gradient is not finite,
 * bit 2 when a gradient's norm is within ``tolerance`` (negative: none), with a margin so that
 * the exact check that follows (in torch) never misses one. */
static int64_t NAME(look)(const T *values, const T *grads, int64_t n, int64_t d, const uint8_t *active,
                          double tolerance) {
    int64_t flags = 0;
    for (int64_t r = 0; r < n; r++) {
        if (active && !active[r]) continue;
        double norm = 0;
        int finite = isfinite(values[r]);
        for (int64_t j = 0; j < d; j++) {
            const T g = grads[r * d + j];
            finite = finite && isfinite(g);
            norm += (double)g * (double)g;
        }
        if (!finite) flags |= 1;
        if (tolerance >= 0 && sqrt(norm) <= tolerance * (1 + 1e-6) + 1e-300) flags |= 2;
    }
    return flags;
}

/* What one evaluation needs: the tape, its buffers and parameters, and where the values and
 * gradients of the n rows of d elements lie; the rows looked at (all when active is NULL) and
 * the tolerance (negative: none). */
typedef struct {
    const int64_t *tape;
    int64_t count;
    T **bufs;
    const double *params;
    int64_t n, d;
    const T *values, *grads;
    const uint8_t *active;
    double tolerance;
} NAME(context);

/* Runs the tape once, then looks at the rows: returns ``look``'s flags. */
int64_t NAME(evaluate)(const NAME(context) *ctx) {
    NAME(execute)(ctx->tape, ctx->count, ctx->bufs, ctx->params);
    return NAME(look)(ctx->values, ctx->grads, ctx->n, ctx->d, ctx->active, ctx->tolerance);
}
