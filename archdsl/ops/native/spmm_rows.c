/* Sparse (CSR) weight times a dense (channels x pixels) activation, the layout of Fast Sparse ConvNets:
 * y[m, p] = bias[m] + sum_j val[j] * x[col[j], p] over row m's non-zeros j, for p in [0, P).
 *
 * Each non-zero weight streams a contiguous run of pixels. Pixels go in blocks (64, then 16, then 1) held in
 * vector accumulators across a whole output row, so y is written once; the block loop is outermost so the
 * input block (channels x block) stays in cache while every output row reads it. GCC vector extensions keep
 * the source portable; -march=native picks the widest registers the machine has. */
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

static void rows_block64(int64_t M, int64_t P, int64_t p0, const int32_t *crow, const int32_t *col,
                         const float *val, const float *x, const float *bias, float *y) {
  for (int64_t m = 0; m < M; m++) {
    float b = bias ? bias[m] : 0.0f;
    v16 a0 = {0}, a1, a2, a3;
    a0 += b;
    a1 = a0; a2 = a0; a3 = a0;
    for (int32_t j = crow[m]; j < crow[m + 1]; j++) {
      const float *xr = x + (int64_t)col[j] * P + p0;
      float v = val[j];
      v16 x0, x1, x2, x3;
      memcpy(&x0, xr, 64); memcpy(&x1, xr + 16, 64); memcpy(&x2, xr + 32, 64); memcpy(&x3, xr + 48, 64);
      a0 += v * x0; a1 += v * x1; a2 += v * x2; a3 += v * x3;
    }
    float *yr = y + m * P + p0;
    memcpy(yr, &a0, 64); memcpy(yr + 16, &a1, 64); memcpy(yr + 32, &a2, 64); memcpy(yr + 48, &a3, 64);
  }
}

static void rows_block16(int64_t M, int64_t P, int64_t p0, const int32_t *crow, const int32_t *col,
                         const float *val, const float *x, const float *bias, float *y) {
  for (int64_t m = 0; m < M; m++) {
    v16 a0 = {0};
    a0 += bias ? bias[m] : 0.0f;
    for (int32_t j = crow[m]; j < crow[m + 1]; j++) {
      v16 x0;
      memcpy(&x0, x + (int64_t)col[j] * P + p0, 64);
      a0 += val[j] * x0;
    }
    memcpy(y + m * P + p0, &a0, 64);
  }
}

void archdsl_spmm_rows(int64_t M, int64_t P, const int32_t *crow, const int32_t *col, const float *val,
                       const float *x, const float *bias, float *y) {
  int64_t p0 = 0;
  for (; p0 + 64 <= P; p0 += 64) rows_block64(M, P, p0, crow, col, val, x, bias, y);
  for (; p0 + 16 <= P; p0 += 16) rows_block16(M, P, p0, crow, col, val, x, bias, y);
  for (; p0 < P; p0++) {
    for (int64_t m = 0; m < M; m++) {
      float a = bias ? bias[m] : 0.0f;
      for (int32_t j = crow[m]; j < crow[m + 1]; j++) a += val[j] * x[(int64_t)col[j] * P + p0];
      y[m * P + p0] = a;
    }
  }
}
