// One full-batch step's value and gradient for a mean over rows of a function
// of each row's score, reading each row of x once (functional_sgd.speed._row_kernel).
//
//   L(w, b) = (1/n) sum_i l(s_i, y_i),   s_i = x_i . w + b,
//   dL/dw   = (1/n) sum_i l'(s_i, y_i) x_i,   dL/db = (1/n) sum_i l'(s_i, y_i).
//
// A row is read from memory once: its score is taken, and the row, still in
// the first-level cache, is added into the gradient at once. The rows are cut
// into lanes fixed by the shape alone; each lane sums its own rows into its own
// partial gradient, and the lanes are added in their order. The threads of
// XLA's pool take lanes as they come, so the bits depend on the shape only,
// not on how many threads ran or which lane each took.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Row : int32_t {
  kSquaredError = 0,         // l = (s - y)^2                      (linear_mse)
  kMnistDistance = 1,        // l = y == 1 ? 1 - p : p, p = sigmoid(s)  (mnist_loss)
  kLogisticCrossEntropy = 2  // l = softplus(s) - y s              (binary_cross_entropy)
};

// Lanes of at least this many bytes of rows (fewer lanes for small data)...
constexpr int64_t kMinLaneBytes = 64 << 10;
// ...and at most this many lanes...
constexpr int64_t kMaxLanes = 64;
// ...whose partial gradients (a row long each) hold at most this many bytes in
// all: very long rows get fewer lanes.
constexpr int64_t kMaxPartialBytes = 16 << 20;
// Independent partial sums of a long row's score.
constexpr int64_t kDotLanes = 32;
// Rows of at least this many values are taken one at a time, shorter ones four
// at a time (on a 2-core EPYC: bench/investigations/one_pass.py).
constexpr int64_t kLongRow = 256;
// Short rows whose terms are taken in one vector loop (a multiple of 4).
constexpr int64_t kTileRows = 16;

// exp(x) for x <= 0, in operations a vector loop can take (the C library's
// exp is a call per value): x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its
// Taylor series (to within an ulp), times 2^n built in the exponent's bits.
// Below the smallest normal number's log it is 0.
template <typename T>
struct ExpConstants;
template <>
struct ExpConstants<float> {
  using Bits = int32_t;
  static constexpr int kTerms = 8, kMantissa = 23, kBias = 127;
  static constexpr float kMin = -87.33654f;  // log(FLT_MIN)
  static constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
};
template <>
struct ExpConstants<double> {
  using Bits = int64_t;
  static constexpr int kTerms = 14, kMantissa = 52, kBias = 1023;
  static constexpr double kMin = -708.3964185322641;  // log(DBL_MIN)
  static constexpr double kRound = 6755399441055744.0;  // 1.5 * 2^52
};

template <typename T>
inline T ExpNonPositive(T x) {
  using C = ExpConstants<T>;
  const T clamped = x < C::kMin ? C::kMin : x;
  const T n = (clamped * T(1.4426950408889634) + C::kRound) - C::kRound;  // nearest
  const T r = (clamped - n * T(0.693145751953125)) - n * T(1.428606820309417232e-06);
  T series = T(1);
#pragma GCC unroll 16
  for (int k = C::kTerms; k >= 1; --k) series = T(1) + series * r * (T(1) / T(k));
  const typename C::Bits bits = (static_cast<typename C::Bits>(n) + C::kBias) << C::kMantissa;
  T scale;
  std::memcpy(&scale, &bits, sizeof(T));
  return x < C::kMin ? T(0) : series * scale;
}

// log(1 + e) for 0 <= e <= 1: u = 1 + e = 2^k m with m in [sqrt(1/2), sqrt(2)],
// log m = 2 atanh((m - 1) / (m + 1)) by its series, and the rounding of 1 + e
// put back ((e - (u - 1)) / u).
template <typename T>
inline T Log1pUnit(T e) {
  constexpr int kTerms = sizeof(T) == 4 ? 6 : 12;
  const T u = T(1) + e;
  const bool high = u > T(1.4142135623730951);
  const T m = high ? u * T(0.5) : u;
  const T t = (m - T(1)) / (m + T(1));
  const T t2 = t * t;
  T series = T(1) / T(2 * kTerms + 1);
#pragma GCC unroll 16
  for (int k = kTerms - 1; k >= 0; --k) series = T(1) / T(2 * k + 1) + t2 * series;
  return (high ? T(0.6931471805599453) : T(0)) + T(2) * t * series + (e - (u - T(1))) / u;
}

// l(s, y) into *loss and dl/ds into *slope. The row function is a template
// argument, so the loop it sits in holds no branch and no unused call.
// sigmoid(s) = 1 / (1 + e) for s >= 0, e / (1 + e) below, with e = exp(-|s|),
// and softplus(s) = max(s, 0) + log(1 + e): no overflow either way. kVector:
// written with selects and ExpNonPositive / Log1pUnit, so a loop over a tile
// of scores vectorizes; else with the C library's exp and log1p (shorter
// latency, for one row at a time).
template <int32_t kRow, bool kVector, typename T>
inline void RowTerms(T s, T y, T* loss, T* slope) {
  if constexpr (kRow == kSquaredError) {
    T r = s - y;
    *loss = r * r;
    *slope = T(2) * r;
  } else {
    const T e = kVector ? ExpNonPositive(-std::abs(s)) : std::exp(-std::abs(s));
    const T p = (s >= T(0) ? T(1) : e) / (T(1) + e);
    if constexpr (kRow == kMnistDistance) {
      const T dp = p * (T(1) - p);
      const bool one = y == T(1);
      *loss = one ? T(1) - p : p;
      *slope = one ? -dp : dp;
    } else {  // kLogisticCrossEntropy
      *loss = (s > T(0) ? s : T(0)) + (kVector ? Log1pUnit(e) : std::log1p(e)) - y * s;
      *slope = p - y;
    }
  }
}

// A row's score, in kDotLanes independent partial sums (one sum's chain of
// adds would be as long as the row) added pairwise at the end.
template <typename T>
inline T Dot(const T* __restrict x, const T* __restrict w, int64_t d) {
  T part[kDotLanes] = {};
  int64_t j = 0;
  for (; j + kDotLanes <= d; j += kDotLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kDotLanes; ++k) part[k] += x[j + k] * w[j + k];
  }
  T tail = 0;
  for (; j < d; ++j) tail += x[j] * w[j];
  for (int64_t width = kDotLanes / 2; width > 0; width /= 2) {
    for (int64_t k = 0; k < width; ++k) part[k] += part[k + width];
  }
  return part[0] + tail;
}

// The scores of four rows (x0 and the three after it) in one sweep, four
// independent sums: a short row's one sum is too short to keep the core busy.
template <typename T>
[[gnu::always_inline]] inline void Scores4(const T* __restrict x0, const T* __restrict w,
                                           int64_t d, T* __restrict z) {
  const T* x1 = x0 + d;
  const T* x2 = x1 + d;
  const T* x3 = x2 + d;
  T z0 = 0, z1 = 0, z2 = 0, z3 = 0;
#pragma omp simd reduction(+ : z0, z1, z2, z3)
  for (int64_t j = 0; j < d; ++j) {
    z0 += x0[j] * w[j];
    z1 += x1[j] * w[j];
    z2 += x2[j] * w[j];
    z3 += x3[j] * w[j];
  }
  z[0] = z0, z[1] = z1, z[2] = z2, z[3] = z3;
}

// grad += s_k x_k for four rows, in one update of grad.
template <typename T>
[[gnu::always_inline]] inline void AddRows4(const T* __restrict x0, T s0, T s1, T s2, T s3,
                                            int64_t d, T* __restrict grad) {
  const T* x1 = x0 + d;
  const T* x2 = x1 + d;
  const T* x3 = x2 + d;
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) grad[j] += (s0 * x0[j] + s1 * x1[j]) + (s2 * x2[j] + s3 * x3[j]);
}

// Sums over the rows [lo, hi): the loss into *loss, the slopes into *slope_sum,
// slope_i x_i into grad (d values, zeroed here). A long row is taken alone;
// short ones four at a time, and where the loss needs exp, a tile of rows at a
// time (their scores, then their terms in one vector loop, then grad), all
// while the rows are in cache.
template <int32_t kRow, typename T>
void Lane(const T* __restrict x, const T* __restrict y, const T* __restrict w, T b, int64_t d,
          int64_t lo, int64_t hi, T* __restrict grad, T* loss, T* slope_sum) {
  std::fill(grad, grad + d, T(0));
  T loss_total = 0, slope_total = 0;
  int64_t i = lo;
  if constexpr (kRow == kSquaredError) {  // four short rows at a time, no exp to take
    for (; d < kLongRow && i + 4 <= hi; i += 4) {
      const T* x0 = x + i * d;
      T z[4], l[4], s[4];
      Scores4(x0, w, d, z);
      for (int k = 0; k < 4; ++k) RowTerms<kRow, false>(z[k] + b, y[i + k], &l[k], &s[k]);
      loss_total += (l[0] + l[1]) + (l[2] + l[3]);
      slope_total += (s[0] + s[1]) + (s[2] + s[3]);
      AddRows4(x0, s[0], s[1], s[2], s[3], d, grad);
    }
  } else {  // a tile of short rows: its scores, then its terms in one vector loop
    T z[kTileRows], s[kTileRows], losses[kTileRows] = {}, slopes[kTileRows] = {};
    for (; d < kLongRow && i + kTileRows <= hi; i += kTileRows) {
      const T* tile = x + i * d;
      for (int64_t r = 0; r < kTileRows; r += 4) Scores4(tile + r * d, w, d, z + r);
#pragma omp simd
      for (int64_t k = 0; k < kTileRows; ++k) {
        T l;
        RowTerms<kRow, true>(z[k] + b, y[i + k], &l, &s[k]);
        losses[k] += l;  // a sum for each place in the tile, added up after the lane
        slopes[k] += s[k];
      }
      for (int64_t r = 0; r < kTileRows; r += 4) {
        AddRows4(tile + r * d, s[r], s[r + 1], s[r + 2], s[r + 3], d, grad);
      }
    }
    for (int64_t k = 0; k < kTileRows; ++k) loss_total += losses[k], slope_total += slopes[k];
  }
  for (; i < hi; ++i) {
    const T* xi = x + i * d;
    T l, slope;
    RowTerms<kRow, false>(Dot(xi, w, d) + b, y[i], &l, &slope);
    loss_total += l;
    slope_total += slope;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) grad[j] += slope * xi[j];
  }
  *loss = loss_total;
  *slope_sum = slope_total;
}

template <typename T>
void LaneOf(int32_t row, const T* x, const T* y, const T* w, T b, int64_t d, int64_t lo,
            int64_t hi, T* grad, T* loss, T* slope_sum) {
  switch (row) {
    case kSquaredError:
      return Lane<kSquaredError>(x, y, w, b, d, lo, hi, grad, loss, slope_sum);
    case kMnistDistance:
      return Lane<kMnistDistance>(x, y, w, b, d, lo, hi, grad, loss, slope_sum);
    default:
      return Lane<kLogisticCrossEntropy>(x, y, w, b, d, lo, hi, grad, loss, slope_sum);
  }
}

// The lanes' work, shared by the threads that take part; kept alive by each
// task until it has taken its last lane (a task that starts after the call
// has returned finds no lane left and touches nothing else).
template <typename T>
struct Work {
  int32_t row;
  const T* x;
  const T* y;
  const T* w;
  T b;
  int64_t n, d, lanes;
  std::vector<T> grads, losses, slopes;  // a lane's partial sums
  std::atomic<int64_t> next{0}, done{0};

  void TakeLanes() {
    for (int64_t lane; (lane = next.fetch_add(1)) < lanes;) {
      int64_t lo = n * lane / lanes, hi = n * (lane + 1) / lanes;
      LaneOf(row, x, y, w, b, d, lo, hi, grads.data() + lane * d, &losses[lane], &slopes[lane]);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

template <typename T>
ffi::Error Step(ffi::ThreadPool& pool, int32_t row, const ffi::AnyBuffer& x,
                const ffi::AnyBuffer& y, const ffi::AnyBuffer& w, const ffi::AnyBuffer& b,
                ffi::Result<ffi::AnyBuffer>& value, ffi::Result<ffi::AnyBuffer>& grad_w,
                ffi::Result<ffi::AnyBuffer>& grad_b) {
  auto dims = x.dimensions();
  const int64_t n = dims[0], d = dims[1];
  auto work = std::make_shared<Work<T>>();
  work->row = row;
  work->x = x.typed_data<T>();
  work->y = y.typed_data<T>();
  work->w = w.typed_data<T>();
  work->b = *b.typed_data<T>();
  work->n = n;
  work->d = d;
  const int64_t row_bytes = std::max<int64_t>(1, d * int64_t(sizeof(T)));
  const int64_t most_lanes = std::max<int64_t>(1, kMaxPartialBytes / row_bytes);
  work->lanes = std::clamp<int64_t>(n * row_bytes / kMinLaneBytes, 1,
                                    std::min({kMaxLanes, n, most_lanes}));
  work->grads.assign(work->lanes * d, T(0));
  work->losses.assign(work->lanes, T(0));
  work->slopes.assign(work->lanes, T(0));

  const int64_t helpers = std::min<int64_t>(pool.num_threads(), work->lanes) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([work] { work->TakeLanes(); });
  }
  work->TakeLanes();  // the calling thread takes lanes too, so none waits unstarted
  while (work->done.load(std::memory_order_acquire) < work->lanes) std::this_thread::yield();

  T* gw = grad_w->typed_data<T>();
  std::fill(gw, gw + d, T(0));
  T loss = 0, slope = 0;
  for (int64_t lane = 0; lane < work->lanes; ++lane) {
    const T* g = work->grads.data() + lane * d;
    for (int64_t j = 0; j < d; ++j) gw[j] += g[j];
    loss += work->losses[lane];
    slope += work->slopes[lane];
  }
  const T scale = T(1) / T(n);
  for (int64_t j = 0; j < d; ++j) gw[j] *= scale;
  *value->typed_data<T>() = loss * scale;
  *grad_b->typed_data<T>() = slope * scale;
  return ffi::Error::Success();
}

ffi::Error RowMeanStep(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer y,
                       ffi::AnyBuffer w, ffi::AnyBuffer b, int32_t row,
                       ffi::Result<ffi::AnyBuffer> value, ffi::Result<ffi::AnyBuffer> grad_w,
                       ffi::Result<ffi::AnyBuffer> grad_b) {
  auto dims = x.dimensions();
  if (dims.size() != 2 || y.dimensions().size() != 1 || y.dimensions()[0] != dims[0] ||
      w.dimensions().size() != 1 || w.dimensions()[0] != dims[1] || dims[0] < 1) {
    return ffi::Error::InvalidArgument("row_mean_step: x (n, d), y (n,), w (d,), n >= 1");
  }
  if (row < kSquaredError || row > kLogisticCrossEntropy) {
    return ffi::Error::InvalidArgument("row_mean_step: unknown row function");
  }
  auto type = x.element_type();
  if (y.element_type() != type || w.element_type() != type || b.element_type() != type) {
    return ffi::Error::InvalidArgument("row_mean_step: x, y, w and b of one dtype");
  }
  switch (type) {
    case ffi::DataType::F32:
      return Step<float>(pool, row, x, y, w, b, value, grad_w, grad_b);
    case ffi::DataType::F64:
      return Step<double>(pool, row, x, y, w, b, value, grad_w, grad_b);
    default:
      return ffi::Error::InvalidArgument("row_mean_step: float32 or float64 only");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FunctionalSgdRowMeanStep, RowMeanStep,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // x (n, d), row-major
                                  .Arg<ffi::AnyBuffer>()  // y (n,)
                                  .Arg<ffi::AnyBuffer>()  // w (d,)
                                  .Arg<ffi::AnyBuffer>()  // b ()
                                  .Attr<int32_t>("row")
                                  .Ret<ffi::AnyBuffer>()    // the loss ()
                                  .Ret<ffi::AnyBuffer>()    // dL/dw (d,)
                                  .Ret<ffi::AnyBuffer>());  // dL/db ()
