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
#include <utility>
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
// Values in 64 bytes (one AVX-512 register, two of AVX2, four of NEON): a
// short row is read in chunks of this many.
template <typename T>
constexpr int64_t kChunk = 64 / sizeof(T);
// Rows of at most this many chunks are short: they go a tile at a time, with
// the chunk count fixed at compile time so that every loop unrolls (a runtime
// count measured 1.2-1.4x slower on a 2-core EPYC). Longer rows, and rows
// shorter than a chunk, go one at a time.
constexpr int kMaxChunks = 16;
// Short rows in a tile: their scores, then their terms in one vector loop,
// then their gradient, all while the tile is in the first-level cache.
constexpr int64_t kTileRows = 16;
// A row taken one at a time asks for the row this many ahead while it is
// added into the gradient, a line per chunk, into the second-level cache: the
// memory stream goes on while the core adds (1.1-1.7x faster at 300 to 4,000
// float32 values on a 2-core EPYC; into the first level, or in a burst before
// the row, it measured slower).
constexpr int64_t kAheadRows = 4;
// Likewise a tile of rows of 2 or more chunks asks for the tile this many
// ahead while it is added into the gradient (1.05-1.15x at 32 to 200 float32
// values; at one chunk, 16 values, 1.04x slower; while the tile is scored,
// slower).
constexpr int64_t kAheadTiles = 4;

// A row of a sigmoid loss waits on its exp (about 20 ns) between its score
// and its update. For rows of at most this many chunks (4 KB: this row and
// the next stay in L1 beside the gradient) the next row is scored before
// this one is added, so the wait overlaps a read (float32 rows of 300 to
// 1,000 values: 1.04-1.24x; of 2,000 or 4,000, slower; the squared error
// has no wait to fill, and tiles of short rows measured level).
constexpr int64_t kScoreAheadMaxChunks = 64;

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

// The rows of [lo, hi), of d values with W <= d and (K - 1) W < d <= K W
// (W = kChunk<T>), a tile at a time: the loss and the slopes added into
// *loss_sum and *slope_sum, slope_i x_i into grad. Returns the first row not
// taken (fewer than a tile are left). Chunk k < K - 1 holds columns
// [k W, k W + W); the last chunk holds [d - W, d), overlapping the one before
// by `skip` columns, which weigh 0 in it and are not added into grad from it.
// So no load is masked: masked loads, or a mask on the overlap, measured
// 1.2-3.4x slower on a 2-core EPYC. An infinite value there makes 0 * inf =
// NaN: a tile holding a NaN score takes that row's score again in one sweep
// (the sigmoid of +-inf is finite: mnist_loss would turn NaN otherwise).
template <int32_t kRow, int K, typename T>
int64_t Tiles(const T* __restrict x, const T* __restrict y, const T* __restrict w, T b, int64_t d,
              int64_t lo, int64_t hi, T* __restrict grad, T* loss_sum, T* slope_sum) {
  constexpr int64_t W = kChunk<T>;
  const int64_t last = d - W;  // the last chunk's first column
  const int64_t skip = K * W - d;
  T wk[K][W] = {}, g[K][W] = {};
  for (int64_t k = 0; k < K - 1; ++k) std::copy(w + k * W, w + k * W + W, wk[k]);
  for (int64_t j = skip; j < W; ++j) wk[K - 1][j] = w[last + j];
  T losses[kTileRows] = {}, slopes[kTileRows] = {};
  int64_t i = lo;
  for (; i + kTileRows <= hi; i += kTileRows) {
    const T* tile = x + i * d;
    T z[kTileRows], s[kTileRows];
    for (int64_t r = 0; r < kTileRows; ++r) {
      const T* xr = tile + r * d;
      T acc[W] = {};
#pragma GCC unroll 16
      for (int64_t k = 0; k < K - 1; ++k) {
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) acc[j] += xr[k * W + j] * wk[k][j];
      }
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) acc[j] += xr[last + j] * wk[K - 1][j];
#pragma GCC unroll 8
      for (int64_t width = W / 2; width > 0; width /= 2) {  // a tree: no chain of W adds
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) acc[j] += acc[j + width];
      }
      z[r] = acc[0];
    }
    if (skip > 0) {  // an infinite x in the overlap: 0 * inf made its score NaN
      bool unsure = false;
#pragma omp simd reduction(|| : unsure)
      for (int64_t r = 0; r < kTileRows; ++r) unsure = unsure || z[r] != z[r];
      if (unsure) {
        for (int64_t r = 0; r < kTileRows; ++r) {
          if (z[r] != z[r]) z[r] = Dot(tile + r * d, w, d);  // +-inf as read once, or NaN
        }
      }
    }
#pragma omp simd
    for (int64_t r = 0; r < kTileRows; ++r) {
      T l;
      RowTerms<kRow, true>(z[r] + b, y[i + r], &l, &s[r]);
      losses[r] += l;  // a sum for each place in the tile, added up at the end
      slopes[r] += s[r];
    }
    const T* later = x + std::min(i + kAheadTiles * kTileRows, hi - 1) * d;
    for (int64_t r = 0; r < kTileRows; r += 4) {  // grad += s_r x_r, four rows at a time
      const T* x0 = tile + r * d;
      if constexpr (K >= 2) {  // the tile kAheadTiles on, a line per row and chunk, into L2
#pragma GCC unroll 16
        for (int64_t k = 0; k < K; ++k) {
          for (int64_t q = 0; q < 4; ++q) __builtin_prefetch(later + (r + q) * d + k * W, 0, 1);
        }
      }
      const T* x1 = x0 + d;
      const T* x2 = x1 + d;
      const T* x3 = x2 + d;
      const T s0 = s[r], s1 = s[r + 1], s2 = s[r + 2], s3 = s[r + 3];
#pragma GCC unroll 16
      for (int64_t k = 0; k < K - 1; ++k) {
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
          const int64_t at = k * W + j;
          g[k][j] += (s0 * x0[at] + s1 * x1[at]) + (s2 * x2[at] + s3 * x3[at]);
        }
      }
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) {
        const int64_t at = last + j;
        g[K - 1][j] += (s0 * x0[at] + s1 * x1[at]) + (s2 * x2[at] + s3 * x3[at]);
      }
    }
  }
  for (int64_t k = 0; k < K - 1; ++k) {
    for (int64_t j = 0; j < W; ++j) grad[k * W + j] += g[k][j];
  }
  for (int64_t j = skip; j < W; ++j) grad[last + j] += g[K - 1][j];
  for (int64_t r = 0; r < kTileRows; ++r) *loss_sum += losses[r], *slope_sum += slopes[r];
  return i;
}

// Tiles<kRow, chunks, T>, for a chunk count known at run time only.
template <int32_t kRow, typename T, int... kChunks>
int64_t TilesOf(int64_t chunks, std::integer_sequence<int, kChunks...>, const T* x, const T* y,
                const T* w, T b, int64_t d, int64_t lo, int64_t hi, T* grad, T* loss_sum,
                T* slope_sum) {
  using Taker = int64_t (*)(const T*, const T*, const T*, T, int64_t, int64_t, int64_t, T*, T*, T*);
  static constexpr Taker kTakers[] = {&Tiles<kRow, kChunks + 1, T>...};
  return kTakers[chunks - 1](x, y, w, b, d, lo, hi, grad, loss_sum, slope_sum);
}

// Sums over the rows [lo, hi): the loss into *loss, the slopes into *slope_sum,
// slope_i x_i into grad (d values, zeroed here). Short rows go a tile at a
// time (Tiles); the others, and the short rows after the last tile, one at a
// time, the row still in cache when it is added into grad, the row kAheadRows
// on asked for meanwhile.
template <int32_t kRow, typename T>
void Lane(const T* __restrict x, const T* __restrict y, const T* __restrict w, T b, int64_t d,
          int64_t lo, int64_t hi, T* __restrict grad, T* loss, T* slope_sum) {
  std::fill(grad, grad + d, T(0));
  T loss_total = 0, slope_total = 0;
  int64_t i = lo;
  const int64_t chunks = (d + kChunk<T> - 1) / kChunk<T>;
  if (d >= kChunk<T> && chunks <= kMaxChunks) {
    i = TilesOf<kRow, T>(chunks, std::make_integer_sequence<int, kMaxChunks>(), x, y, w, b, d,
                         lo, hi, grad, &loss_total, &slope_total);
  }
  constexpr int64_t W = kChunk<T>;
  const bool long_rows = chunks > kMaxChunks;  // short ones measured slower asking ahead
  const bool score_ahead = kRow != kSquaredError && long_rows && chunks <= kScoreAheadMaxChunks;
  T next_score = score_ahead && i < hi ? Dot(x + i * d, w, d) : T(0);
  for (; i < hi; ++i) {
    const T* xi = x + i * d;
    T l, slope;
    RowTerms<kRow, false>((score_ahead ? next_score : Dot(xi, w, d)) + b, y[i], &l, &slope);
    if (score_ahead && i + 1 < hi) next_score = Dot(xi + d, w, d);  // does not wait on slope
    loss_total += l;
    slope_total += slope;
    const char* ahead = reinterpret_cast<const char*>(x + std::min(i + kAheadRows, hi - 1) * d);
    int64_t j = 0;
    for (; j + W <= d; j += W) {
      if (long_rows) __builtin_prefetch(ahead + j * int64_t(sizeof(T)), 0, 1);  // into L2
#pragma omp simd
      for (int64_t k = 0; k < W; ++k) grad[j + k] += slope * xi[j + k];
    }
    if (long_rows) __builtin_prefetch(ahead + j * int64_t(sizeof(T)), 0, 1);  // never faults
#pragma omp simd
    for (int64_t k = j; k < d; ++k) grad[k] += slope * xi[k];
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
