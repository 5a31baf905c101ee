/* Sparse (CSR) weight times a dense (channels x pixels) activation, the layout of Fast Sparse ConvNets:
 * y[m, p] = bias[m] + sum_j val[j] * x[col[j], p] over row m's non-zeros j, for p in [0, P).
 *
 * Each non-zero weight streams a contiguous run of pixels. Pixels go in blocks (64 wide, then one block of the
 * 16-multiple left, then 8 and 4, then single pixels) held in vector accumulators across a whole output row, so
 * y is written once; the block loop is outermost so the input block (channels x block) stays in cache while every
 * output row reads it. GCC vector extensions keep the source portable; -march=native picks the widest registers
 * the machine has. */
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* nv (1 to 4) vectors of 16 pixels per row; inlined with a constant nv so the accumulators stay in registers */
static inline __attribute__((always_inline)) void rows_v16(int nv, int64_t M, int64_t P, int64_t p0,
    const int32_t *crow, const int32_t *col, const float *val, const float *x, const float *bias, float *y) {
  for (int64_t m = 0; m < M; m++) {
    v16 acc[4];
    for (int k = 0; k < nv; k++) {
      acc[k] = (v16){0};
      acc[k] += bias ? bias[m] : 0.0f;
    }
    for (int32_t j = crow[m]; j < crow[m + 1]; j++) {
      const float *xr = x + (int64_t)col[j] * P + p0;
      float v = val[j];
      for (int k = 0; k < nv; k++) {
        v16 xk;
        memcpy(&xk, xr + 16 * k, sizeof xk);
        acc[k] += v * xk;
      }
    }
    for (int k = 0; k < nv; k++) memcpy(y + m * P + p0 + 16 * k, &acc[k], sizeof acc[k]);
  }
}

#define ROWS_NARROW(NAME, VEC)                                                                                 \
  static void NAME(int64_t M, int64_t P, int64_t p0, const int32_t *crow, const int32_t *col,                 \
                   const float *val, const float *x, const float *bias, float *y) {                            \
    for (int64_t m = 0; m < M; m++) {                                                                          \
      VEC a = {0};                                                                                             \
      a += bias ? bias[m] : 0.0f;                                                                              \
      for (int32_t j = crow[m]; j < crow[m + 1]; j++) {                                                        \
        VEC xk;                                                                                                \
        memcpy(&xk, x + (int64_t)col[j] * P + p0, sizeof xk);                                                  \
        a += val[j] * xk;                                                                                      \
      }                                                                                                        \
      memcpy(y + m * P + p0, &a, sizeof a);                                                                    \
    }                                                                                                          \
  }
ROWS_NARROW(rows_v8, v8)
ROWS_NARROW(rows_v4, v4)

void archdsl_spmm_rows(int64_t M, int64_t P, const int32_t *crow, const int32_t *col, const float *val,
                       const float *x, const float *bias, float *y) {
  int64_t p0 = 0;
  for (; p0 + 64 <= P; p0 += 64) rows_v16(4, M, P, p0, crow, col, val, x, bias, y);
  switch ((P - p0) / 16) {
    case 3: rows_v16(3, M, P, p0, crow, col, val, x, bias, y); p0 += 48; break;
    case 2: rows_v16(2, M, P, p0, crow, col, val, x, bias, y); p0 += 32; break;
    case 1: rows_v16(1, M, P, p0, crow, col, val, x, bias, y); p0 += 16; break;
  }
  if (p0 + 8 <= P) { rows_v8(M, P, p0, crow, col, val, x, bias, y); p0 += 8; }
  if (p0 + 4 <= P) { rows_v4(M, P, p0, crow, col, val, x, bias, y); p0 += 4; }
  for (; p0 < P; p0++) {
    for (int64_t m = 0; m < M; m++) {
      float a = bias ? bias[m] : 0.0f;
      for (int32_t j = crow[m]; j < crow[m + 1]; j++) a += val[j] * x[(int64_t)col[j] * P + p0];
      y[m * P + p0] = a;
    }
  }
}
