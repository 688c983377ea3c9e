// Fused CPU kernels for LayerNorm, RMSNorm and pRMSNorm: forward and backward (dx, dw, db).
//
// Every op works on a 2D row view (rows of N elements, last dim contiguous, any row stride).
// The weight and bias are per feature (N elements), or with `channels` > 0 per row: row r takes
// element r % channels, as the rows (sample, channel) of a conv map (B, C, H*W) normalized over
// its positions do; their gradients are then per-row sums reduced per channel in row order.
// Each row is read from memory once per kernel; the extra passes a row needs (statistic, then
// output) hit the cache. Inputs of any float dtype are computed in fp32 (fp64 for fp64 inputs:
// the "acc" type) with at::vec vectors, rows split across threads with at::parallel_for.
// Parameter gradients come from per-block partial sums added in a fixed order (see
// `accumulate_param_grads`), so they are deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

// x86 intrinsics only in the AVX2 / AVX-512 builds (streaming stores, next-row prefetch); every other build
// (DEFAULT: aarch64, POWER, or x86 forced to it with REPRO_CPU_CAPABILITY=DEFAULT) is at::vec's
// portable code alone, with normal stores.
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define REPRO_X86_STREAMS 1
#include <immintrin.h>
#else
#define REPRO_X86_STREAMS 0
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <tuple>
#include <utility>
#include <type_traits>

namespace {

using at::Tensor;
using at::vec::Vectorized;

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// ------------------------------------------------------------------ vector helpers
// Loops step one acc vector at a time; the last step may be short. The step length is a
// compile-time constant for full steps and a runtime count for the tail, so the overloads below
// pick plain loads/stores for full steps and masked ones only for the tail.
template <typename A>
using Full = std::integral_constant<int64_t, Vectorized<A>::size()>;

template <typename A, typename F>
inline void vec_loop(int64_t begin, int64_t end, const F& step) {
  constexpr int64_t width = Vectorized<A>::size();
  int64_t i = begin;
  for (; i + width <= end; i += width) step(i, Full<A>{});
  if (i < end) step(i, end - i);
}

template <typename T, typename A = acc_t<T>>
inline Vectorized<A> load(const T* p, Full<A>) {
  if constexpr (std::is_same_v<T, A>) {
    return Vectorized<A>::loadu(p);
  } else {
    Vectorized<float> out;
    at::vec::load_to_float(p, out);
    return out;
  }
}

// A short load zero-fills the lanes past `count`.
template <typename T, typename A = acc_t<T>>
inline Vectorized<A> load(const T* p, int64_t count) {
  if constexpr (std::is_same_v<T, A>) {
    return Vectorized<A>::loadu(p, count);
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, count)));
  }
}

template <typename T, typename A, typename Len>
inline void store(T* p, const Vectorized<A>& v, Len len) {
  if constexpr (std::is_same_v<T, A>) {
    v.store(p, static_cast<int>(len));
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, static_cast<int>(len));
  }
}

// Outputs larger than the cache are written with non-temporal (streaming) stores: a normal store
// first reads the line from memory (read for ownership), so a memory-bound kernel would move a
// third more bytes in the forward (x in, y out) and a quarter more in the backward. Smaller
// outputs use normal stores, which leave them in cache for the next op to read.
// Only full vectors of fp32/fp64 at vector-aligned addresses stream; everything else (the row
// tail, 16-bit outputs, unaligned rows) falls back to a normal store.
// The threshold, in bytes of the output: REPRO_CPU_STREAM_BYTES or 32 MiB (on the 2-core Xeon this
// was written on, streaming won from 32 MiB outputs up; repro-bench measures it), and changeable
// at run time through set_stream_threshold (the tests use 0 to run the streaming path on small
// shapes).
std::atomic<int64_t>& stream_threshold() {
  static std::atomic<int64_t> threshold{[] {
    const char* env = std::getenv("REPRO_CPU_STREAM_BYTES");
    return env ? int64_t(std::atoll(env)) : (int64_t(32) << 20);
  }()};
  return threshold;
}

int64_t set_stream_threshold(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "the streaming threshold must be >= 0 bytes, got ", bytes);
  return stream_threshold().exchange(bytes);
}

// Streaming pays only into memory that is already backed by pages. A fresh mapping (glibc serves
// blocks of 32 MiB and more with a new mmap and unmaps them on free, so in a training process every
// large output is one) is page-faulted in by the first store to each page, and the kernel zeroes the
// page through the cache as it does; a normal store then hits that line, while a streaming store
// writes it to memory a second time (measured: 1.1-1.3x F.layer_norm's time at 16384 x 1024 with
// streaming, against <= 0.8x without). One page of the output tells: the last one, as the first
// shares its page with the allocator's header. (Elsewhere than Linux memory is taken as backed.)
inline bool backed_by_pages(const void* first, int64_t nbytes) {
#if defined(__linux__)
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t last = (reinterpret_cast<uintptr_t>(first) + nbytes - 1) & ~(page - 1);
  unsigned char resident = 0;
  if (mincore(reinterpret_cast<void*>(last), page, &resident) != 0) return false;
  return resident & 1;
#else
  return true;
#endif
}

// A fresh output mapping is page-faulted in 4 KiB at a time: at 64 MiB that is 16384 faults, which
// cost more than the kernel's own work. Asking for transparent huge pages on it (where the kernel
// allows them on request: THP "madvise" or "always") faults it in 2 MiB at a time. Outputs of at
// least 4 MiB only (smaller ones come from the heap, already backed); REPRO_CPU_HUGEPAGES=0 turns it
// off. It changes no value, only how the pages are mapped.
inline void advise_huge_pages(const Tensor& out) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* env = std::getenv("REPRO_CPU_HUGEPAGES");
    return !(env && std::string(env) == "0");
  }();
  constexpr uintptr_t huge = uintptr_t(2) << 20;
  const int64_t nbytes = out.nbytes();
  if (!enabled || nbytes < int64_t(4) << 20 || backed_by_pages(out.data_ptr(), nbytes)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(out.data_ptr()) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(out.data_ptr()) + nbytes) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: failure is harmless
#else
  (void)out;
#endif
}

// Whether to write `out` with streaming stores: fp32/fp64 outputs of at least the threshold, in
// memory already backed by pages. Threshold 0 (the tests' setting) streams whatever the memory.
template <typename T>
inline bool should_stream(const Tensor& out) {
#if REPRO_X86_STREAMS
  constexpr bool streamable = std::is_same_v<T, float> || std::is_same_v<T, double>;
  const int64_t threshold = stream_threshold().load(std::memory_order_relaxed);
  if (!streamable || out.nbytes() == 0 || static_cast<int64_t>(out.nbytes()) < threshold) return false;
  return threshold == 0 || backed_by_pages(out.data_ptr(), out.nbytes());
#else
  return false;
#endif
}

// A streaming store needs a vector-aligned address; each store checks (rows, and the column
// ranges the backward splits a row into, need not start aligned).
template <typename T, typename A, typename Len>
inline void store_out(T* p, const Vectorized<A>& v, Len len, bool stream) {
  if constexpr (std::is_same_v<Len, Full<A>> && std::is_same_v<T, A>) {
    if (stream && reinterpret_cast<uintptr_t>(p) % sizeof(Vectorized<A>) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
      if constexpr (std::is_same_v<T, float>) return _mm512_stream_ps(p, v);
      if constexpr (std::is_same_v<T, double>) return _mm512_stream_pd(p, v);
#elif defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<T, float>) return _mm256_stream_ps(p, v);
      if constexpr (std::is_same_v<T, double>) return _mm256_stream_pd(p, v);
#endif
    }
  }
  store(p, v, len);
}

// Streaming stores are weakly ordered: fence them before the thread's work is handed back.
inline void fence_streams() {
#if REPRO_X86_STREAMS
  _mm_sfence();
#endif
}

// The next row's data, asked for while this row's second pass runs from cache: the rows' first
// pass otherwise waits on memory with nothing else to do (prefetch hints never fault, and change
// no value). AVX2 / AVX-512 builds only: on a 2-core Zen 3 VM the AVX2 kernels took 0.66-0.93 of
// their time with it, while the DEFAULT build's RMSNorm backward took 1.39-1.46x (paired,
// results/bench/cpu_kernel_ratios/README.md), so the portable build (aarch64's) goes without.
inline void prefetch([[maybe_unused]] const void* p) {
#if REPRO_X86_STREAMS
  __builtin_prefetch(p, 0, 3);
#endif
}

// Zero the lanes past the tail, for sums whose terms are not zero on zero-filled lanes.
template <typename A>
inline Vectorized<A> keep_valid(const Vectorized<A>& v, Full<A>) {
  return v;
}
template <typename A>
inline Vectorized<A> keep_valid(const Vectorized<A>& v, int64_t count) {
  return Vectorized<A>::set(Vectorized<A>(A(0)), v, count);
}

template <typename A>
inline A sum_lanes(const Vectorized<A>& v) {
  return at::vec::vec_reduce_all<A>([](auto a, auto b) { return a + b; }, v);
}

// Row sums: step(acc, i, len) adds the terms of columns [i, i + len) into acc, an array of
// kSums vectors. Four independent sets of accumulators take turns, so a row in cache is not
// bound by the latency of one chain of adds; they are combined in a fixed order.
template <typename A, size_t kSums, typename Step>
inline std::array<A, kSums> vec_sums(int64_t begin, int64_t end, const Step& step) {
  using V = Vectorized<A>;
  constexpr int64_t width = V::size();
  constexpr int64_t chains = 4;
  std::array<std::array<V, kSums>, chains> acc;
  for (auto& a : acc) a.fill(V(A(0)));
  int64_t i = begin;
  for (; i + chains * width <= end; i += chains * width) {
    for (int64_t c = 0; c < chains; ++c) step(acc[c], i + c * width, Full<A>{});
  }
  for (; i + width <= end; i += width) step(acc[0], i, Full<A>{});
  if (i < end) step(acc[0], i, end - i);
  std::array<A, kSums> out;
  for (size_t s = 0; s < kSums; ++s) out[s] = sum_lanes((acc[0][s] + acc[1][s]) + (acc[2][s] + acc[3][s]));
  return out;
}

// Sum of squares of x[:k]: pRMSNorm's statistic. The forward and the (eps outside) backward both
// take it from here, so they see the same value.
template <typename T, typename A = acc_t<T>>
inline A sum_squares(const T* x, int64_t k) {
  return vec_sums<A, 1>(0, k, [&](auto& acc, int64_t i, auto len) {
    const auto v = load(x + i, len);
    acc[0] = at::vec::fmadd(v, v, acc[0]);
  })[0];
}

// Enough elements per task that a thread's share outweighs the cost of waking it.
constexpr int64_t kMinElementsPerTask = 1 << 15;

inline int64_t rows_grain(int64_t n) {
  return std::max<int64_t>(1, kMinElementsPerTask / n);
}

// ------------------------------------------------------------------ parameter gradients
// dw and db are sums over all rows. The rows are cut into a number of blocks that depends only
// on the row count (never on the thread count or on timing); each block sums its rows into its
// own partial row, and the partials are then added in block order. The result is bit-identical
// run to run and for any number of threads.
constexpr int64_t kMaxBlocks = 64;
constexpr int64_t kMinRowsPerBlock = 16;
// The backward computes dx for a group of rows in one sweep over the columns and adds the
// group's dw/db contributions to the block partials once: a load and a store of each partial
// per group instead of per row. That pays on short rows, where those loads and stores would bound
// the backward's speed; on rows of 256-2048 elements it costs, as the group's interleaved dx
// rows miss the cache together (measured, 2-core Zen 4, 2 threads, fp32 RMSNorm backward:
// 4096 x 512 0.34-0.45 ms one row at a time against 0.67-0.76 ms in groups of 4, 16384 x 1024
// 5.7 against 6.2 ms; 65536 x 128 3.2 against 2.5 ms). REPRO_CPU_GROUP_ROWS (1-4) overrides the
// choice, for benchmarks.
constexpr int64_t kGroupRows = 4;

std::atomic<int64_t>& forced_group_rows() {
  static std::atomic<int64_t> forced{[] {
    const char* env = std::getenv("REPRO_CPU_GROUP_ROWS");
    const int64_t g = env ? std::atoll(env) : 0;
    return g >= 1 && g <= kGroupRows ? g : int64_t(0);
  }()};
  return forced;
}

// 0 restores the automatic choice; returns the previous setting (benchmarks compare both).
int64_t set_group_rows(int64_t rows) {
  TORCH_CHECK(rows >= 0 && rows <= kGroupRows, "group rows must be in [0, ", kGroupRows, "], got ", rows);
  return forced_group_rows().exchange(rows);
}

inline int64_t group_rows(int64_t n) {
  const int64_t forced = forced_group_rows().load(std::memory_order_relaxed);
  if (forced) return forced;
  return n <= 1024 ? 1 : kGroupRows;
}

// group_fn(first_row, Rows<rows>{}, dw_partial, db_partial) computes dx for rows [first_row,
// first_row + rows), rows <= kGroupRows, and adds their contributions to the block's partials
// (null where that gradient is not needed). The row count is a compile-time constant: with a
// runtime count the compiler kept the group's row pointers and sums on the stack and reloaded
// them for every vector of the column loop.
template <int64_t kRows>
using Rows = std::integral_constant<int64_t, kRows>;

template <typename A, typename GroupFn>
std::tuple<Tensor, Tensor> accumulate_param_grads(
    int64_t m, int64_t n, bool need_dw, bool need_db, const at::TensorOptions& acc_opts,
    const GroupFn& group_fn) {
  const int64_t blocks = std::min(kMaxBlocks, (m + kMinRowsPerBlock - 1) / kMinRowsPerBlock);
  const int64_t n_partials = int64_t(need_dw) + int64_t(need_db);
  Tensor partials = at::zeros({n_partials, blocks, n}, acc_opts);
  A* dw_partials = need_dw ? partials.data_ptr<A>() : nullptr;
  A* db_partials = need_db ? partials.data_ptr<A>() + (n_partials - 1) * blocks * n : nullptr;

  const int64_t rows_per_block = blocks > 0 ? (m + blocks - 1) / blocks : 0;
  const int64_t group = group_rows(n);
  const int64_t block_grain = std::max<int64_t>(1, rows_grain(n) / std::max<int64_t>(rows_per_block, 1));
  at::parallel_for(0, blocks, block_grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      A* dw_p = dw_partials ? dw_partials + b * n : nullptr;
      A* db_p = db_partials ? db_partials + b * n : nullptr;
      const int64_t r1 = std::min(m, (b + 1) * rows_per_block);
      for (int64_t r = b * rows_per_block; r < r1; r += group) {
        static_assert(kGroupRows == 4, "one case per group size");
        switch (std::min(group, r1 - r)) {
          case 1: group_fn(r, Rows<1>{}, dw_p, db_p); break;
          case 2: group_fn(r, Rows<2>{}, dw_p, db_p); break;
          case 3: group_fn(r, Rows<3>{}, dw_p, db_p); break;
          default: group_fn(r, Rows<4>{}, dw_p, db_p); break;
        }
      }
    }
    fence_streams();  // group_fn may write dx with streaming stores
  });

  // Both gradients in one parallel region (each region costs a wake-up of every thread), and
  // in the calling thread unless the partials are large: adding them is cheap next to the rows.
  Tensor dw = need_dw ? at::empty({n}, acc_opts) : Tensor();
  Tensor db = need_db ? at::empty({n}, acc_opts) : Tensor();
  const std::array<std::pair<const A*, A*>, 2> sums = {
      std::pair<const A*, A*>{dw_partials, need_dw ? dw.data_ptr<A>() : nullptr},
      std::pair<const A*, A*>{db_partials, need_db ? db.data_ptr<A>() : nullptr}};
  const int64_t reads_per_column = std::max<int64_t>(blocks * n_partials, 1);
  at::parallel_for(0, n, 8 * kMinElementsPerTask / reads_per_column, [&](int64_t j0, int64_t j1) {
    for (const auto& [parts, out] : sums) {
      if (!out) continue;
      vec_loop<A>(j0, j1, [&](int64_t j, auto len) {
        Vectorized<A> acc(A(0));
        for (int64_t b = 0; b < blocks; ++b) acc = acc + load(parts + b * n + j, len);
        store(out + j, acc, len);
      });
    }
  });
  return {dw, db};
}

// ------------------------------------------------------------------ argument handling
at::ScalarType acc_dtype(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_rows(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == 2, name, " must be a 2D row view, got ", t.dim(), " dims");
  TORCH_CHECK(t.numel() == 0 || t.size(1) == 1 || t.stride(1) == 1, name,
              " must have a contiguous last dim");
}

// channels == 0: parameters per feature (N of them); > 0: per row, `channels` of them, and the
// rows come in whole groups of `channels` (row r takes element r % channels).
void check_channels(int64_t channels, int64_t m) {
  TORCH_CHECK(channels >= 0, "channels must be >= 0, got ", channels);
  TORCH_CHECK(channels == 0 || m % channels == 0, "with channels = ", channels,
              " the row count must be a multiple of it, got ", m, " rows");
}

inline int64_t param_size(const Tensor& x, int64_t channels) {
  return channels > 0 ? channels : x.size(1);
}

// Weights and biases are read as acc-type values; converting them once (N or `channels` elements)
// keeps a single kernel per input dtype whatever the parameter dtype. A missing weight is ones.
Tensor param_or_ones(const std::optional<Tensor>& p, const Tensor& x, int64_t channels) {
  const auto opts = x.options().dtype(acc_dtype(x));
  if (!p.has_value() || !p->defined()) return at::ones({param_size(x, channels)}, opts);
  TORCH_CHECK(p->numel() == param_size(x, channels), "a weight or bias must have ",
              param_size(x, channels), " elements, got ", p->numel());
  return p->to(acc_dtype(x)).contiguous();
}

std::optional<Tensor> param(const std::optional<Tensor>& p, const Tensor& x, int64_t channels) {
  if (!p.has_value() || !p->defined()) return std::nullopt;
  return param_or_ones(p, x, channels);
}

// The per-channel gradient from per-row sums: out[c] = sum over b of rows[b * channels + c], added
// in row order in the calling thread (m adds: nothing next to the rows), so it is deterministic.
template <typename A>
Tensor reduce_per_channel(const Tensor& row_sums, int64_t channels) {
  if (!row_sums.defined()) return Tensor();
  Tensor out = at::zeros({channels}, row_sums.options());
  const A* rows = row_sums.data_ptr<A>();
  A* op = out.data_ptr<A>();
  for (int64_t r = 0; r < row_sums.numel(); ++r) op[r % channels] += rows[r];
  return out;
}

// The backward with per-row parameters: row_fn(r) writes row r's dx and returns its dw and db
// terms (each row by one thread), which are then reduced per channel.
template <typename A, typename RowFn>
std::tuple<Tensor, Tensor> per_channel_param_grads(
    int64_t m, int64_t n, int64_t channels, bool need_dw, bool need_db, const at::TensorOptions& acc_opts,
    const RowFn& row_fn) {
  Tensor row_dw = need_dw ? at::empty({m}, acc_opts) : Tensor();
  Tensor row_db = need_db ? at::empty({m}, acc_opts) : Tensor();
  A* dw_p = need_dw ? row_dw.data_ptr<A>() : nullptr;
  A* db_p = need_db ? row_db.data_ptr<A>() : nullptr;
  at::parallel_for(0, m, rows_grain(n), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto [dw_term, db_term] = row_fn(r);
      if (dw_p) dw_p[r] = dw_term;
      if (db_p) db_p[r] = db_term;
    }
    fence_streams();  // row_fn may write dx with streaming stores
  });
  return {reduce_per_channel<A>(row_dw, channels), reduce_per_channel<A>(row_db, channels)};
}

// ------------------------------------------------------------------ RMSNorm / pRMSNorm
// y = x * rstd * w (+ b), rstd from the first k features: rsqrt(ms + eps) with eps inside the
// root, 1 / (sqrt(ms) + eps) with eps outside.
std::tuple<Tensor, Tensor> rms_norm_forward(
    const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    double eps, int64_t k, bool eps_outside, int64_t channels) {
  check_rows(x, "x");
  const int64_t m = x.size(0), n = x.size(1);
  TORCH_CHECK(k >= 1 && k <= n, "k must be in [1, ", n, "], got ", k);
  check_channels(channels, m);
  Tensor y = at::empty({m, n}, x.options());
  Tensor rstd = at::empty({m}, x.options().dtype(acc_dtype(x)));
  const Tensor w = param_or_ones(weight, x, channels);
  const auto b = param(bias, x, channels);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_forward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    using V = Vectorized<A>;
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    A* rp = rstd.data_ptr<A>();
    const A* wp = w.data_ptr<A>();
    const A* bp = b ? b->data_ptr<A>() : nullptr;
    const int64_t x_stride = x.stride(0);
    const bool stream = should_stream<T>(y);
    advise_huge_pages(y);
    const A eps_a = static_cast<A>(eps);

    at::parallel_for(0, m, rows_grain(n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = xp + r * x_stride;
        const T* next = r + 1 < r1 ? xr + x_stride : xr;
        T* yr = yp + r * n;
        const A ms = sum_squares(xr, k) / static_cast<A>(k);
        const A s = eps_outside ? A(1) / (std::sqrt(ms) + eps_a) : A(1) / std::sqrt(ms + eps_a);
        rp[r] = s;
        const V sv(s);
        if (channels > 0) {  // one gain and offset for the whole row
          const V wv(wp[r % channels]), bv(bp ? bp[r % channels] : A(0));
          vec_loop<A>(0, n, [&](int64_t i, auto len) {
            prefetch(next + i);
            store_out(yr + i, at::vec::fmadd(load(xr + i, len) * sv, wv, bv), len, stream);
          });
        } else if (bp) {
          vec_loop<A>(0, n, [&](int64_t i, auto len) {
            prefetch(next + i);
            store_out(yr + i, at::vec::fmadd(load(xr + i, len) * sv, load(wp + i, len), load(bp + i, len)), len, stream);
          });
        } else {
          vec_loop<A>(0, n, [&](int64_t i, auto len) {
            prefetch(next + i);
            store_out(yr + i, load(xr + i, len) * sv * load(wp + i, len), len, stream);
          });
        }
      }
      fence_streams();
    });
  });
  return {y, rstd};
}

// With g = dy * w, c = sum_j g_j x_j over the whole row and s = rstd:
//   dx_j = s g_j - [j < k] a x_j,  a = s^3 c / k                        (eps inside)
//                                  a = s^2 c / (k rms), rms = sqrt(ms)   (eps outside; 0 if rms = 0)
// The statistic only sees x[:k], so only those features get the second term. (eps is unused:
// rstd already holds it.)
template <typename T, typename A>
inline A rms_prefix_coef(const T* xr, A s, A c_sum, int64_t k, bool eps_outside) {
  const A k_a = static_cast<A>(k);
  if (eps_outside) {
    // the forward's rms, recomputed (from rstd it would lose digits where rms << eps); an
    // all-zero prefix has no gradient through the statistic (its term is 0 * inf otherwise)
    const A rms = std::sqrt(sum_squares(xr, k) / k_a);
    return rms > A(0) ? s * s * c_sum / (k_a * rms) : A(0);
  }
  return s * s * s * c_sum / k_a;
}

// The backward's argument checks, shared by both parameter layouts.
void check_backward_rows(const Tensor& dy, const Tensor& x, int64_t channels) {
  check_rows(x, "x");
  check_rows(dy, "dy");
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(),
              "dy must match x in shape and dtype");
  check_channels(channels, x.size(0));
}

// rms_norm_backward_per_channel: one gain per row (channels > 0): g = dy * w_c, so c_sum = w_c * sum(dy x),
// and the row's dw and db terms are s * sum(dy x) and sum(dy), reduced per channel afterwards.
// A function of its own, so the per-feature backward's body is the code it was before the
// per-channel mode (with the branch inside it, scripts/cpu_kernel_ab.py measured that path 14-21 %
// slower at 1024 x 512; out of it, still 15 % in one series and 5 % in another: not resolved,
// results/bench/cpu_kernel_ratios/README.md).
std::tuple<Tensor, Tensor, Tensor> rms_norm_backward_per_channel(
    const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& s_all, int64_t k, bool eps_outside,
    bool need_dw, bool has_bias, int64_t channels) {
  const int64_t m = x.size(0), n = x.size(1);
  const auto acc_opts = x.options().dtype(acc_dtype(x));
  Tensor dx = at::empty({m, n}, x.options());
  Tensor dw, db;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_backward_per_channel", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    using V = Vectorized<A>;
    const T* xp = x.data_ptr<T>();
    const T* dyp = dy.data_ptr<T>();
    T* dxp = dx.data_ptr<T>();
    const A* sp = s_all.data_ptr<A>();
    const A* wp = w.data_ptr<A>();
    const int64_t x_stride = x.stride(0), dy_stride = dy.stride(0);
    const bool stream = should_stream<T>(dx);
    advise_huge_pages(dx);
    std::tie(dw, db) = per_channel_param_grads<A>(m, n, channels, need_dw, has_bias, acc_opts, [&](int64_t r) {
      const T* xr = xp + r * x_stride;
      const T* dyr = dyp + r * dy_stride;
      T* dxr = dxp + r * n;
      const A s = sp[r], wc = wp[r % channels];
      const auto [dyx, dy_sum] = vec_sums<A, 2>(0, n, [&](auto& acc, int64_t i, auto len) {
        const V dyv = load(dyr + i, len);
        acc[0] = at::vec::fmadd(dyv, load(xr + i, len), acc[0]);
        acc[1] = acc[1] + dyv;
      });
      const V sv(s), wv(wc), av(rms_prefix_coef(xr, s, wc * dyx, k, eps_outside));
      vec_loop<A>(0, k, [&](int64_t i, auto len) {
        store_out(dxr + i, sv * (load(dyr + i, len) * wv) - av * load(xr + i, len), len, stream);
      });
      vec_loop<A>(k, n, [&](int64_t i, auto len) {
        store_out(dxr + i, sv * (load(dyr + i, len) * wv), len, stream);
      });
      return std::pair<A, A>{s * dyx, dy_sum};
    });
  });
  return {dx, dw, db};
}

std::tuple<Tensor, Tensor, Tensor> rms_norm_backward(
    const Tensor& dy, const Tensor& x, const std::optional<Tensor>& weight, const Tensor& rstd,
    double eps, int64_t k, bool eps_outside, bool has_bias, int64_t channels) {
  check_backward_rows(dy, x, channels);
  const int64_t m = x.size(0), n = x.size(1);
  TORCH_CHECK(k >= 1 && k <= n, "k must be in [1, ", n, "], got ", k);
  const auto acc_opts = x.options().dtype(acc_dtype(x));
  const Tensor s_all = rstd.to(acc_dtype(x)).contiguous();
  TORCH_CHECK(s_all.numel() == m, "rstd must have one value per row");
  const Tensor w = param_or_ones(weight, x, channels);
  const bool need_dw = weight.has_value() && weight->defined();
  if (channels > 0) return rms_norm_backward_per_channel(dy, x, w, s_all, k, eps_outside, need_dw, has_bias, channels);
  Tensor dx = at::empty({m, n}, x.options());
  Tensor dw, db;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    using V = Vectorized<A>;
    const T* xp = x.data_ptr<T>();
    const T* dyp = dy.data_ptr<T>();
    T* dxp = dx.data_ptr<T>();
    const A* sp = s_all.data_ptr<A>();
    const A* wp = w.data_ptr<A>();
    const int64_t x_stride = x.stride(0), dy_stride = dy.stride(0);
    const bool stream = should_stream<T>(dx);
    advise_huge_pages(dx);

    auto group_fn = [&](int64_t r0, auto rows_c, A* dw_p, A* db_p) {
      constexpr int64_t rows = decltype(rows_c)::value;
      const T* xr[rows];
      const T* dyr[rows];
      T* dxr[rows];
      A s[rows], a[rows];
      for (int64_t j = 0; j < rows; ++j) {
        xr[j] = xp + (r0 + j) * x_stride;
        dyr[j] = dyp + (r0 + j) * dy_stride;
        dxr[j] = dxp + (r0 + j) * n;
        s[j] = sp[r0 + j];
        const A c_sum = vec_sums<A, 1>(0, n, [&](auto& acc, int64_t i, auto len) {
          acc[0] = at::vec::fmadd(load(dyr[j] + i, len) * load(wp + i, len), load(xr[j] + i, len), acc[0]);
        })[0];
        a[j] = rms_prefix_coef(xr[j], s[j], c_sum, k, eps_outside);
      }
      const bool last = r0 + rows >= m;
      const T* next_x = last ? xr[0] : xp + (r0 + rows) * x_stride;
      const T* next_dy = last ? dyr[0] : dyp + (r0 + rows) * dy_stride;
      auto columns = [&](int64_t begin, int64_t end, auto in_prefix) {
        vec_loop<A>(begin, end, [&](int64_t i, auto len) {
          prefetch(next_x + i);
          prefetch(next_dy + i);
          const V wv = load(wp + i, len);
          V dw_sum(A(0)), db_sum(A(0));
          for (int64_t j = 0; j < rows; ++j) {
            const V xv = load(xr[j] + i, len);
            const V dyv = load(dyr[j] + i, len);
            const V sv(s[j]);
            V dxv = sv * (dyv * wv);
            if constexpr (decltype(in_prefix)::value) dxv = dxv - V(a[j]) * xv;
            store_out(dxr[j] + i, dxv, len, stream);
            dw_sum = at::vec::fmadd(dyv, xv * sv, dw_sum);
            db_sum = db_sum + dyv;
          }
          if (dw_p) store(dw_p + i, load(dw_p + i, len) + dw_sum, len);
          if (db_p) store(db_p + i, load(db_p + i, len) + db_sum, len);
        });
      };
      columns(0, k, std::true_type{});
      columns(k, n, std::false_type{});
    };
    std::tie(dw, db) = accumulate_param_grads<A>(m, n, need_dw, has_bias, acc_opts, group_fn);
  });
  return {dx, dw, db};
}

// ------------------------------------------------------------------ LayerNorm
// Mean first, then the variance as the mean of (x - mean)^2 (the second pass reads the row from
// cache): no cancellation for rows with a large mean, unlike E[x^2] - mean^2.
std::tuple<Tensor, Tensor, Tensor> layer_norm_forward(
    const Tensor& x, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    double eps, int64_t channels) {
  check_rows(x, "x");
  const int64_t m = x.size(0), n = x.size(1);
  check_channels(channels, m);
  Tensor y = at::empty({m, n}, x.options());
  Tensor mean = at::empty({m}, x.options().dtype(acc_dtype(x)));
  Tensor rstd = at::empty({m}, x.options().dtype(acc_dtype(x)));
  const Tensor w = param_or_ones(weight, x, channels);
  const auto b = param(bias, x, channels);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "layer_norm_forward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    using V = Vectorized<A>;
    const T* xp = x.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    A* mp = mean.data_ptr<A>();
    A* rp = rstd.data_ptr<A>();
    const A* wp = w.data_ptr<A>();
    const A* bp = b ? b->data_ptr<A>() : nullptr;
    const int64_t x_stride = x.stride(0);
    const bool stream = should_stream<T>(y);
    advise_huge_pages(y);
    const A n_a = static_cast<A>(n);
    const A eps_a = static_cast<A>(eps);

    at::parallel_for(0, m, rows_grain(n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = xp + r * x_stride;
        const T* next = r + 1 < r1 ? xr + x_stride : xr;
        T* yr = yp + r * n;
        const A mu = vec_sums<A, 1>(0, n, [&](auto& acc, int64_t i, auto len) {
          acc[0] = acc[0] + load(xr + i, len);
        })[0] / n_a;
        const V muv(mu);
        const A var = vec_sums<A, 1>(0, n, [&](auto& acc, int64_t i, auto len) {
          const V d = keep_valid(load(xr + i, len) - muv, len);
          acc[0] = at::vec::fmadd(d, d, acc[0]);
        })[0] / n_a;
        const A s = A(1) / std::sqrt(var + eps_a);
        mp[r] = mu;
        rp[r] = s;
        const V sv(s);
        if (channels > 0) {  // one gain and offset for the whole row
          const V wv(wp[r % channels]), bv(bp ? bp[r % channels] : A(0));
          vec_loop<A>(0, n, [&](int64_t i, auto len) {
            prefetch(next + i);
            store_out(yr + i, at::vec::fmadd((load(xr + i, len) - muv) * sv, wv, bv), len, stream);
          });
        } else if (bp) {
          vec_loop<A>(0, n, [&](int64_t i, auto len) {
            prefetch(next + i);
            const V xh = (load(xr + i, len) - muv) * sv;
            store_out(yr + i, at::vec::fmadd(xh, load(wp + i, len), load(bp + i, len)), len, stream);
          });
        } else {
          vec_loop<A>(0, n, [&](int64_t i, auto len) {
            prefetch(next + i);
            store_out(yr + i, (load(xr + i, len) - muv) * sv * load(wp + i, len), len, stream);
          });
        }
      }
      fence_streams();
    });
  });
  return {y, mean, rstd};
}

// The LayerNorm backward: with xh = (x - mean) * rstd and g = dy * w,
//   dx = rstd * (g - mean(g) - xh * mean(g * xh)).
// layer_norm_backward_per_channel: one gain per row (channels > 0): g = dy * w_c, so mean(g) = w_c mean(dy)
// and mean(g xh) = w_c mean(dy xh); the row's dw and db terms are sum(dy xh) and sum(dy), reduced
// per channel afterwards. A function of its own, as rms_norm_backward_per_channel.
std::tuple<Tensor, Tensor, Tensor> layer_norm_backward_per_channel(
    const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& mu_all, const Tensor& s_all,
    bool need_dw, bool has_bias, int64_t channels) {
  const int64_t m = x.size(0), n = x.size(1);
  const auto acc_opts = x.options().dtype(acc_dtype(x));
  Tensor dx = at::empty({m, n}, x.options());
  Tensor dw, db;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "layer_norm_backward_per_channel", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    using V = Vectorized<A>;
    const T* xp = x.data_ptr<T>();
    const T* dyp = dy.data_ptr<T>();
    T* dxp = dx.data_ptr<T>();
    const A* mup = mu_all.data_ptr<A>();
    const A* sp = s_all.data_ptr<A>();
    const A* wp = w.data_ptr<A>();
    const int64_t x_stride = x.stride(0), dy_stride = dy.stride(0);
    const bool stream = should_stream<T>(dx);
    advise_huge_pages(dx);
    const A inv_n = A(1) / static_cast<A>(n);
    std::tie(dw, db) = per_channel_param_grads<A>(m, n, channels, need_dw, has_bias, acc_opts, [&](int64_t r) {
      const T* xr = xp + r * x_stride;
      const T* dyr = dyp + r * dy_stride;
      T* dxr = dxp + r * n;
      const A wc = wp[r % channels];
      const V muv(mup[r]), sv(sp[r]), wv(wc);
      // zero-filled tail lanes give dy = 0, so both sums stay exact without masking
      const auto [dy_sum, dyxh] = vec_sums<A, 2>(0, n, [&](auto& acc, int64_t i, auto len) {
        const V dyv = load(dyr + i, len);
        acc[0] = acc[0] + dyv;
        acc[1] = at::vec::fmadd(dyv, (load(xr + i, len) - muv) * sv, acc[1]);
      });
      const V g_mean(wc * dy_sum * inv_n), gxh_mean(wc * dyxh * inv_n);
      vec_loop<A>(0, n, [&](int64_t i, auto len) {
        const V xh = (load(xr + i, len) - muv) * sv;
        store_out(dxr + i, sv * (load(dyr + i, len) * wv - g_mean - xh * gxh_mean), len, stream);
      });
      return std::pair<A, A>{dyxh, dy_sum};
    });
  });
  return {dx, dw, db};
}

std::tuple<Tensor, Tensor, Tensor> layer_norm_backward(
    const Tensor& dy, const Tensor& x, const std::optional<Tensor>& weight, const Tensor& mean,
    const Tensor& rstd, bool has_bias, int64_t channels) {
  check_backward_rows(dy, x, channels);
  const int64_t m = x.size(0), n = x.size(1);
  const auto acc_opts = x.options().dtype(acc_dtype(x));
  const Tensor mu_all = mean.to(acc_dtype(x)).contiguous();
  const Tensor s_all = rstd.to(acc_dtype(x)).contiguous();
  TORCH_CHECK(mu_all.numel() == m && s_all.numel() == m, "mean and rstd must have one value per row");
  const Tensor w = param_or_ones(weight, x, channels);
  const bool need_dw = weight.has_value() && weight->defined();
  if (channels > 0) return layer_norm_backward_per_channel(dy, x, w, mu_all, s_all, need_dw, has_bias, channels);
  Tensor dx = at::empty({m, n}, x.options());
  Tensor dw, db;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "layer_norm_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    using V = Vectorized<A>;
    const T* xp = x.data_ptr<T>();
    const T* dyp = dy.data_ptr<T>();
    T* dxp = dx.data_ptr<T>();
    const A* mup = mu_all.data_ptr<A>();
    const A* sp = s_all.data_ptr<A>();
    const A* wp = w.data_ptr<A>();
    const int64_t x_stride = x.stride(0), dy_stride = dy.stride(0);
    const bool stream = should_stream<T>(dx);
    advise_huge_pages(dx);
    const A inv_n = A(1) / static_cast<A>(n);

    auto group_fn = [&](int64_t r0, auto rows_c, A* dw_p, A* db_p) {
      constexpr int64_t rows = decltype(rows_c)::value;
      const T* xr[rows];
      const T* dyr[rows];
      T* dxr[rows];
      A mu[rows], s[rows], g_mean[rows], gxh_mean[rows];
      for (int64_t j = 0; j < rows; ++j) {
        xr[j] = xp + (r0 + j) * x_stride;
        dyr[j] = dyp + (r0 + j) * dy_stride;
        dxr[j] = dxp + (r0 + j) * n;
        mu[j] = mup[r0 + j];
        s[j] = sp[r0 + j];
        const V muv(mu[j]), sv(s[j]);
        // zero-filled tail lanes give g = 0, so both sums stay exact without masking
        const auto [g_sum, gxh_sum] = vec_sums<A, 2>(0, n, [&](auto& acc, int64_t i, auto len) {
          const V g = load(dyr[j] + i, len) * load(wp + i, len);
          acc[0] = acc[0] + g;
          acc[1] = at::vec::fmadd(g, (load(xr[j] + i, len) - muv) * sv, acc[1]);
        });
        g_mean[j] = g_sum * inv_n;
        gxh_mean[j] = gxh_sum * inv_n;
      }
      const bool last = r0 + rows >= m;
      const T* next_x = last ? xr[0] : xp + (r0 + rows) * x_stride;
      const T* next_dy = last ? dyr[0] : dyp + (r0 + rows) * dy_stride;
      vec_loop<A>(0, n, [&](int64_t i, auto len) {
        prefetch(next_x + i);
        prefetch(next_dy + i);
        const V wv = load(wp + i, len);
        V dw_sum(A(0)), db_sum(A(0));
        for (int64_t j = 0; j < rows; ++j) {
          const V dyv = load(dyr[j] + i, len);
          const V sv(s[j]);
          const V xh = (load(xr[j] + i, len) - V(mu[j])) * sv;
          store_out(dxr[j] + i, sv * (dyv * wv - V(g_mean[j]) - xh * V(gxh_mean[j])), len, stream);
          dw_sum = at::vec::fmadd(dyv, xh, dw_sum);
          db_sum = db_sum + dyv;
        }
        if (dw_p) store(dw_p + i, load(dw_p + i, len) + dw_sum, len);
        if (db_p) store(db_p + i, load(db_p + i, len) + db_sum, len);
      });
    };
    std::tie(dw, db) = accumulate_param_grads<A>(m, n, need_dw, has_bias, acc_opts, group_fn);
  });
  return {dx, dw, db};
}

// ------------------------------------------------------------------ eager autograd route
// rms_norm / layer_norm on a tensor of any shape, differentiable, with the autograd node in C++:
// the eager route of repro.kernels on CPU. A Python autograd.Function around the kernels costs
// ~0.1 ms a forward + backward in Python (measured on a 2-core EPYC: 25 us forward, 60-80 us
// backward), as much as the kernels themselves at 1024 x 256; here the node calls them directly.
// Same kernels and same results as the custom ops that torch.compile traces (tests compare both).
//
// As kernels/ops.py's as_rows: a (rows, N) view with a contiguous last dim, copied only where no
// such view exists.
Tensor as_rows(const Tensor& t) {
  const Tensor c = t.numel() > 0 && t.stride(-1) != 1 ? t.contiguous() : t;
  return c.dim() == 2 ? c : c.reshape({-1, c.size(-1)});
}

Tensor optional_tensor(const std::optional<Tensor>& p) {
  return p.has_value() ? *p : Tensor();
}

std::optional<Tensor> present(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// The kernels' backward is not itself differentiable. Autograd runs a backward in grad mode only
// when asked for higher-order gradients (create_graph=True): refuse there rather than hand back a
// first-order gradient that silently drops the second-order terms.
void check_first_order() {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "repro.kernels: the CPU kernels' backward is not differentiable (create_graph=True, "
              "double backward); use backend='torch' for higher-order gradients");
}

// dw / db come back in the compute dtype; the parameter's gradient is in the parameter's dtype
Tensor param_grad(const Tensor& g, const Tensor& p) {
  return p.defined() && g.defined() ? g.to(p.scalar_type()) : Tensor();
}

struct RMSNormFunction : public torch::autograd::Function<RMSNormFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                        const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                        double eps, int64_t k, bool eps_outside, int64_t channels) {
    auto [y, rstd] = rms_norm_forward(as_rows(x), weight, bias, eps, k, eps_outside, channels);
    ctx->save_for_backward({x, optional_tensor(weight), optional_tensor(bias), rstd});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["k"] = k;
    ctx->saved_data["eps_outside"] = eps_outside;
    ctx->saved_data["channels"] = channels;
    return y.view(x.sizes());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    check_first_order();
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    auto [dx, dw, db] = rms_norm_backward(
        as_rows(grads[0].reshape(x.sizes())), as_rows(x), present(weight), saved[3],
        ctx->saved_data["eps"].toDouble(), ctx->saved_data["k"].toInt(),
        ctx->saved_data["eps_outside"].toBool(), bias.defined(), ctx->saved_data["channels"].toInt());
    return {dx.view(x.sizes()), param_grad(dw, weight), param_grad(db, bias), Tensor(), Tensor(), Tensor(),
            Tensor()};
  }
};

struct LayerNormFunction : public torch::autograd::Function<LayerNormFunction> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                        const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
                        double eps, int64_t channels) {
    auto [y, mean, rstd] = layer_norm_forward(as_rows(x), weight, bias, eps, channels);
    ctx->save_for_backward({x, optional_tensor(weight), optional_tensor(bias), mean, rstd});
    ctx->saved_data["channels"] = channels;
    return y.view(x.sizes());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    check_first_order();
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    auto [dx, dw, db] = layer_norm_backward(as_rows(grads[0].reshape(x.sizes())), as_rows(x),
                                            present(weight), saved[3], saved[4], bias.defined(),
                                            ctx->saved_data["channels"].toInt());
    return {dx.view(x.sizes()), param_grad(dw, weight), param_grad(db, bias), Tensor(), Tensor()};
  }
};

Tensor rms_norm(const Tensor& x, const std::optional<Tensor>& weight,
                const std::optional<Tensor>& bias, double eps, int64_t k, bool eps_outside,
                int64_t channels) {
  return RMSNormFunction::apply(x, weight, bias, eps, k, eps_outside, channels);
}

Tensor layer_norm(const Tensor& x, const std::optional<Tensor>& weight,
                  const std::optional<Tensor>& bias, double eps, int64_t channels) {
  return LayerNormFunction::apply(x, weight, bias, eps, channels);
}

}  // namespace

// Schemas written out for the default of `channels` (0: per-feature parameters), so a call
// without it means what it meant before the per-channel mode existed (scripts/cpu_kernel_ab.py
// calls an older revision's build and this one alike).
TORCH_LIBRARY(repro_cpu_norms, m) {
  m.def("rms_norm(Tensor x, Tensor? weight, Tensor? bias, float eps, int k, bool eps_outside, int channels=0) -> Tensor",
        &rms_norm);
  m.def("layer_norm(Tensor x, Tensor? weight, Tensor? bias, float eps, int channels=0) -> Tensor", &layer_norm);
  m.def("rms_norm_forward(Tensor x, Tensor? weight, Tensor? bias, float eps, int k, bool eps_outside, "
        "int channels=0) -> (Tensor, Tensor)", &rms_norm_forward);
  m.def("rms_norm_backward(Tensor dy, Tensor x, Tensor? weight, Tensor rstd, float eps, int k, bool eps_outside, "
        "bool has_bias, int channels=0) -> (Tensor, Tensor, Tensor)", &rms_norm_backward);
  m.def("layer_norm_forward(Tensor x, Tensor? weight, Tensor? bias, float eps, int channels=0) -> (Tensor, Tensor, Tensor)",
        &layer_norm_forward);
  m.def("layer_norm_backward(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, bool has_bias, "
        "int channels=0) -> (Tensor, Tensor, Tensor)", &layer_norm_backward);
  m.def("set_stream_threshold", &set_stream_threshold);
  m.def("set_group_rows", &set_group_rows);
}
