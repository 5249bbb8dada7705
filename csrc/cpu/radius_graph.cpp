// CPU radius graph: a cell list over many systems at once, periodic or not, any cell shape.
//
// The spec is eqscale/ops/radius_graph/reference.py; this file returns the same edges, in the
// same order, bit for bit. Outline:
//
//   1. Per system: complete the cell (non-periodic rows -> orthonormal vectors, so every system
//      has an invertible cell), face distances, bins per axis and how many bins to search.
//      Periodic axes get floor(face / cutoff) bins; non-periodic axes are binned over the atoms'
//      extent, never over the (possibly 10^4 A vacuum) box, and the bin count is capped by the
//      atom count, so memory is linear in the atoms whatever the geometry.
//   2. Per atom: fractional coordinates, wrap into the cell on periodic axes (remembering the
//      integer wrap, so unwrapped input still yields exact shifts), bin index.
//   3. Counting sort of atoms by (system, bin): senders of a bin are contiguous in memory.
//   4. Per receiver (in bin order, for locality), in parallel: visit the bins within reach,
//      including several images of the same bin when the cutoff exceeds the cell, test the
//      candidates, keep the nearest max_num_neighbors, sort by (sender, shift).
//   5. Prefix sum of the per-receiver counts gives the exact output size; copy in parallel.
//
// Every step is deterministic: a receiver's edges depend only on the inputs, never on the
// thread schedule, so the output is identical for any number of threads.
//
// The final within-cutoff test and the ranking for max_num_neighbors use the exact float64
// formula of reference.squared_distances, from the caller's positions and the integer shift.
// FMA contraction would change its rounding, hence the pragma (the build uses -ffp-contract=fast).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "memory.h"
#include "parallel.h"


namespace eqscale {
namespace {

using Vec3 = std::array<double, 3>;
using Mat3 = std::array<Vec3, 3>;  // rows are cell vectors

Vec3 cross(const Vec3& a, const Vec3& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
double norm(const Vec3& a) { return std::sqrt(dot(a, a)); }
Vec3 normalized(const Vec3& a) {
  const double n = norm(a);
  return n > 0 ? Vec3{a[0] / n, a[1] / n, a[2] / n} : Vec3{0, 0, 0};
}

// Cell geometry and binning of one system.
struct System {
  int64_t first_atom = 0, num_atoms = 0;
  int64_t first_bin = 0;
  Mat3 cell{};     // the caller's cell (periodic rows are what shifts multiply)
  Mat3 completed{};  // non-periodic rows replaced by an orthonormal completion
  Mat3 inverse{};  // inverse of the completed cell: frac = pos @ inverse
  Mat3 bin_edges{};  // edge vectors of one bin (rows), in A
  double bin_reach = 0;  // cutoff + sum of bin edge lengths: farther bin centres hold no pair
  bool periodic[3] = {false, false, false};
  bool orthogonal = false;  // completed cell vectors mutually orthogonal: bins are boxes
  double origin[3] = {0, 0, 0};  // lowest fractional coordinate on non-periodic axes
  double scale[3] = {1, 1, 1};   // bins per fractional unit
  double face[3] = {1, 1, 1};        // distance between opposite faces of the completed cell, in A
  double bin_length[3] = {1, 1, 1};  // width of a bin along the face normal, in A
  int64_t bins[3] = {1, 1, 1};
  int64_t reach[3] = {0, 0, 0};  // bins searched on each side
  int64_t wrap_lo[3] = {0, 0, 0}, wrap_hi[3] = {0, 0, 0};  // range of the wraps of its atoms
};

// Non-periodic rows -> orthonormal completion of the periodic ones (as reference.complete_cell).
Mat3 complete_cell(const Mat3& cell, const bool* periodic) {
  int p[3], q[3], np = 0, nq = 0;
  for (int k = 0; k < 3; ++k) (periodic[k] ? p[np++] : q[nq++]) = k;
  Mat3 out = {Vec3{1, 0, 0}, Vec3{0, 1, 0}, Vec3{0, 0, 1}};
  if (np == 3) return cell;
  if (np == 2) {
    out[p[0]] = cell[p[0]];
    out[p[1]] = cell[p[1]];
    out[q[0]] = normalized(cross(cell[p[0]], cell[p[1]]));
  } else if (np == 1) {
    const Vec3 a = normalized(cell[p[0]]);
    int least = 0;
    for (int k = 1; k < 3; ++k)
      if (std::abs(a[k]) < std::abs(a[least])) least = k;
    Vec3 e{0, 0, 0};
    e[least] = 1;
    const Vec3 u = normalized(cross(a, e));
    out[p[0]] = cell[p[0]];
    out[q[0]] = u;
    out[q[1]] = cross(a, u);
  }
  return out;
}

double determinant(const Mat3& m) { return dot(m[0], cross(m[1], m[2])); }

Mat3 invert(const Mat3& m, double det) {
  // Rows of the inverse of a row-vector cell are the columns of adj / det; i.e. inverse[i][k] =
  // (m[(k+1)%3] x m[(k+2)%3])[i] / det.
  Mat3 inv{};
  for (int k = 0; k < 3; ++k) {
    const Vec3 c = cross(m[(k + 1) % 3], m[(k + 2) % 3]);
    for (int i = 0; i < 3; ++i) inv[i][k] = c[i] / det;
  }
  return inv;
}

int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// A found edge, before sorting: sender, shift, and the exact squared length (for the cut).

// Below these sizes a loop runs on the calling thread: each parallel region costs starting a
// helper thread.
constexpr int64_t kAtomGrain = 1 << 15;
constexpr int64_t kSystemGrain = 1 << 12;
constexpr int64_t kReceiversPerChunk = 512;
constexpr int64_t kEdgesPerCopyTask = 1 << 18;

int64_t lowest_bit(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_ctzll(x);
#else
  int64_t i = 0;
  while (!(x & 1)) {
    x >>= 1;
    ++i;
  }
  return i;
#endif
}

struct Candidate {
  int64_t sender;
  int64_t shift[3];
  double d2;
};

// A run of bins within reach of a receiver bin, through one periodic image, whose atoms are
// contiguous in sorted order (neighbouring bins along the fastest bin axis, usually).
struct Neighbour {
  int64_t t0, n;     // its atoms, in sorted order
  int64_t image[3];  // periodic image of the bins, in cells
  double offset[3];  // image @ cell
  double lo[3];      // unwrapped bin coordinates: the run spans [lo, hi + 1) along each axis
  double hi[3];
};

struct Entry {
  int64_t sender;
  int64_t shift[3];
};

bool less_sender_shift(const Candidate& a, const Candidate& b) {
  if (a.sender != b.sender) return a.sender < b.sender;
  for (int k = 0; k < 3; ++k)
    if (a.shift[k] != b.shift[k]) return a.shift[k] < b.shift[k];
  return false;
}

bool less_distance(const Candidate& a, const Candidate& b) {
  if (a.d2 != b.d2) return a.d2 < b.d2;
  return less_sender_shift(a, b);
}

// (d2, key) for max_num_neighbors in packed mode: the key order is the (sender, shift) order.
struct Ranked {
  double d2;
  uint64_t key;
  bool operator<(const Ranked& o) const { return d2 != o.d2 ? d2 < o.d2 : key < o.key; }
};

bool keep_half(int64_t src, int64_t dst, const int64_t* s) {
  if (src != dst) return src < dst;
  for (int k = 0; k < 3; ++k)
    if (s[k] != 0) return s[k] > 0;
  return true;  // the self pair
}

int bit_width(uint64_t x) {
  int n = 0;
  while (x) {
    ++n;
    x >>= 1;
  }
  return n;
}

// Packs (sender index within its system, shift) into one uint64 whose integer order is the
// (sender, shift) lexicographic order, so that the per-receiver sort is a sort of integers and
// the buffers hold 8 bytes per edge. Used whenever the fields fit in 63 bits (always, short of
// billions of atoms or positions thousands of cells away from their cell).
struct KeyLayout {
  bool fits = false;
  int bits = 0;  // bits in use
  int sender_at = 0;
  int at[3] = {0, 0, 0};
  int64_t offset[3] = {0, 0, 0};
  uint64_t mask[3] = {0, 0, 0};

  uint64_t pack(int64_t local_sender, const int64_t* s) const {
    return (static_cast<uint64_t>(local_sender) << sender_at) | (static_cast<uint64_t>(s[0] + offset[0]) << at[0]) |
           (static_cast<uint64_t>(s[1] + offset[1]) << at[1]) | static_cast<uint64_t>(s[2] + offset[2]);
  }
  int64_t sender(uint64_t key) const { return static_cast<int64_t>(key >> sender_at); }
  int64_t shift(uint64_t key, int k) const { return static_cast<int64_t>((key >> at[k]) & mask[k]) - offset[k]; }
};

// Sorts one receiver's packed keys (distinct, below 2^63). The order they arrive in is random
// enough that comparison sorts spend their time in mispredicted branches, so: up to a few dozen
// keys, a branch-free rank sort (each key's rank is how many keys are smaller; vectorises); above,
// an LSD radix sort over the bits in use.
void sort_keys(std::vector<uint64_t>& keys, std::vector<uint64_t>& scratch, int bits) {
  const size_t n = keys.size();
  if (n <= 1) return;
  scratch.resize(n);
  if (n <= 48) {
    const int64_t* k = reinterpret_cast<const int64_t*>(keys.data());
    for (size_t i = 0; i < n; ++i) {
      const int64_t key = k[i];
      int64_t rank = 0;
      for (size_t j = 0; j < n; ++j) rank += k[j] < key;
      scratch[rank] = keys[i];
    }
    std::copy(scratch.begin(), scratch.end(), keys.begin());
    return;
  }
  if (bits > 40) {
    std::sort(keys.begin(), keys.end());
    return;
  }
  uint64_t* from = keys.data();
  uint64_t* to = scratch.data();
  for (int shift = 0; shift < bits; shift += 8) {
    uint32_t offsets[256] = {0};
    for (size_t i = 0; i < n; ++i) ++offsets[(from[i] >> shift) & 255];
    uint32_t total = 0;
    for (uint32_t& o : offsets) {
      const uint32_t c = o;
      o = total;
      total += c;
    }
    for (size_t i = 0; i < n; ++i) to[offsets[(from[i] >> shift) & 255]++] = from[i];
    std::swap(from, to);
  }
  if (from != keys.data()) std::copy(from, from + n, keys.data());
}

// Bins per axis for every system; the systems' bins are laid out one after another.
void plan_systems(std::vector<System>& systems, const std::vector<double>& frac, double cutoff) {
  const int64_t num_systems = static_cast<int64_t>(systems.size());
  parallel_for(0, num_systems, kSystemGrain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      System& sys = systems[b];
      double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
      for (int k = 0; k < 3 && sys.num_atoms > 0; ++k) {
        lo[k] = hi[k] = frac[3 * sys.first_atom + k];
        for (int64_t a = sys.first_atom; a < sys.first_atom + sys.num_atoms; ++a) {
          lo[k] = std::min(lo[k], frac[3 * a + k]);
          hi[k] = std::max(hi[k], frac[3 * a + k]);
        }
      }
      // Length to bin along each face normal, in A: the cell on periodic axes, the atoms'
      // extent on the others (whose completed cell vectors are orthonormal, so fractional
      // coordinates there are already lengths).
      double extent[3];
      double wanted[3];
      for (int k = 0; k < 3; ++k) {
        extent[k] = sys.periodic[k] ? sys.face[k] : hi[k] - lo[k];
        // The 1e-9 keeps bins strictly wider than the cutoff when the ratio is an integer, so
        // the search reaches one bin on each side instead of two.
        wanted[k] = std::max(1.0, std::floor(extent[k] / cutoff * (1.0 - 1e-9)));
        // Wrapping is floor(frac), monotone: its range over the system is that of the bounds.
        sys.wrap_lo[k] = sys.periodic[k] ? static_cast<int64_t>(std::floor(lo[k])) : 0;
        sys.wrap_hi[k] = sys.periodic[k] ? static_cast<int64_t>(std::floor(hi[k])) : 0;
      }
      // Cap the bin count at about twice the atoms: wider bins cost more distance tests but
      // memory stays linear in the atoms, for vacuum boxes and tiny cutoffs alike.
      const double cap = std::max(8.0, 2.0 * static_cast<double>(sys.num_atoms));
      const double total = wanted[0] * wanted[1] * wanted[2];
      if (total > cap) {
        const double factor = std::cbrt(cap / total);
        for (int k = 0; k < 3; ++k) wanted[k] = std::max(1.0, std::floor(wanted[k] * factor));
        while (wanted[0] * wanted[1] * wanted[2] > cap) {
          const int k = static_cast<int>(std::max_element(wanted, wanted + 3) - wanted);
          wanted[k] = std::max(1.0, std::floor(wanted[k] / 2));
        }
      }
      for (int k = 0; k < 3; ++k) {
        const int64_t n = static_cast<int64_t>(wanted[k]);
        sys.bins[k] = n;
        if (sys.periodic[k]) {
          sys.origin[k] = 0;
          sys.scale[k] = static_cast<double>(n);
          sys.bin_length[k] = extent[k] / static_cast<double>(n);
          // A pair within the cutoff is at most floor(cutoff / bin_length) + 1 bins apart.
          sys.reach[k] = static_cast<int64_t>(std::floor(cutoff / sys.bin_length[k])) + 1;
        } else {
          sys.origin[k] = lo[k];
          sys.scale[k] = extent[k] > 0 ? static_cast<double>(n) / extent[k] : 0.0;
          sys.bin_length[k] = extent[k] > 0 ? extent[k] / static_cast<double>(n) : 0.0;
          sys.reach[k] = n == 1 ? 0
                                : std::min<int64_t>(n - 1, static_cast<int64_t>(std::floor(cutoff / sys.bin_length[k])) + 1);
        }
      }
      sys.bin_reach = cutoff * (1.0 + 1e-9);
      for (int k = 0; k < 3; ++k) {
        const double inverse_scale = sys.scale[k] > 0 ? 1.0 / sys.scale[k] : 0.0;
        for (int c = 0; c < 3; ++c) sys.bin_edges[k][c] = sys.completed[k][c] * inverse_scale;
        sys.bin_reach += norm(sys.bin_edges[k]) * (1.0 + 1e-9);
      }
    }
  });
  int64_t first_bin = 0;
  for (System& sys : systems) {
    sys.first_bin = first_bin;
    first_bin += sys.bins[0] * sys.bins[1] * sys.bins[2];
  }
}

KeyLayout plan_keys(const std::vector<System>& systems) {
  KeyLayout layout;
  int64_t lower[3] = {0, 0, 0}, upper[3] = {0, 0, 0};
  int64_t max_atoms = 1;
  for (const System& sys : systems) {
    if (sys.num_atoms == 0) continue;
    max_atoms = std::max(max_atoms, sys.num_atoms);
    for (int k = 0; k < 3; ++k) {
      // shift = wrap[sender] - wrap[receiver] - image, image in [image_lo, image_hi].
      const int64_t image_lo = sys.periodic[k] ? floor_div(-sys.reach[k], sys.bins[k]) : 0;
      const int64_t image_hi = sys.periodic[k] ? floor_div(sys.bins[k] - 1 + sys.reach[k], sys.bins[k]) : 0;
      const int64_t spread = sys.wrap_hi[k] - sys.wrap_lo[k];
      lower[k] = std::min(lower[k], -spread - image_hi);
      upper[k] = std::max(upper[k], spread - image_lo);
    }
  }
  int bits[3];
  for (int k = 0; k < 3; ++k) {
    layout.offset[k] = -lower[k];
    bits[k] = bit_width(static_cast<uint64_t>(upper[k] - lower[k]));
    layout.mask[k] = bits[k] == 0 ? 0 : (~uint64_t{0} >> (64 - bits[k]));
  }
  layout.at[2] = 0;
  layout.at[1] = bits[2];
  layout.at[0] = bits[2] + bits[1];
  layout.sender_at = bits[2] + bits[1] + bits[0];
  layout.bits = layout.sender_at + bit_width(static_cast<uint64_t>(max_atoms - 1));
  layout.fits = layout.bits <= 63;
  return layout;
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> radius_graph_impl(const at::Tensor& pos_t, const at::Tensor& batch_t,
                                                                 const at::Tensor& cell_t, const at::Tensor& pbc_t,
                                                                 double cutoff, bool self_interaction,
                                                                 int64_t max_num_neighbors, bool half) {
  const int64_t N = pos_t.size(0);
  const int64_t B = cell_t.size(0);
  const scalar_t* pos = pos_t.data_ptr<scalar_t>();
  const int64_t* batch = batch_t.data_ptr<int64_t>();
  const double* cell_data = cell_t.data_ptr<double>();
  const bool* pbc = pbc_t.data_ptr<bool>();
  const double cutoff2 = cutoff * cutoff;
  const double reach_cutoff = cutoff * (1.0 + 1e-9);
  const double reach_cutoff2 = reach_cutoff * reach_cutoff;

  // --- 1. systems -------------------------------------------------------------------------
  std::vector<System> systems(B);
  for (int64_t a = 0; a < N; ++a) {
    // The Python layer leaves these per-atom checks to this loop (same messages as its own).
    TORCH_CHECK_VALUE(batch[a] >= 0, "batch must be non-negative");
    // A value >= B can only come from an unsorted batch: B covers the last entry.
    TORCH_CHECK_VALUE((a == 0 || batch[a] >= batch[a - 1]) && batch[a] < B,
                      "batch must be sorted (non-decreasing): atoms of one system must be contiguous");
    for (int c = 0; c < 3; ++c)
      TORCH_CHECK_VALUE(std::isfinite(static_cast<double>(pos[3 * a + c])), "pos contains NaN or infinite values");
    systems[batch[a]].num_atoms += 1;
  }
  int64_t first = 0;
  for (int64_t b = 0; b < B; ++b) {
    System& sys = systems[b];
    sys.first_atom = first;
    first += sys.num_atoms;
    for (int i = 0; i < 3; ++i) {
      sys.periodic[i] = pbc[3 * b + i];
      for (int k = 0; k < 3; ++k) sys.cell[i][k] = cell_data[9 * b + 3 * i + k];
    }
    sys.completed = complete_cell(sys.cell, sys.periodic);
    const Mat3& completed = sys.completed;
    const double det = determinant(completed);
    // reference.check_not_singular's criterion.
    double lengths = 1.0;
    bool too_short = false;
    for (int k = 0; k < 3; ++k) {
      if (!sys.periodic[k]) continue;
      lengths *= norm(sys.cell[k]);
      too_short = too_short || norm(sys.cell[k]) < 1e-9;
    }
    TORCH_CHECK_VALUE(!too_short && std::abs(det) / lengths >= 1e-9, "cell of system ", b,
                      " is singular along its periodic axes");
    sys.inverse = invert(completed, det);
    sys.orthogonal = true;
    for (int k = 0; k < 3; ++k) {
      const Vec3& u = completed[k];
      const Vec3& v = completed[(k + 1) % 3];
      sys.orthogonal = sys.orthogonal && std::abs(dot(u, v)) <= 1e-12 * norm(u) * norm(v);
    }
    for (int k = 0; k < 3; ++k)
      sys.face[k] = std::abs(det) / norm(cross(completed[(k + 1) % 3], completed[(k + 2) % 3]));
  }

  // --- 2. fractional coordinates, wrap, bins ------------------------------------------------
  std::vector<double> frac(3 * N);
  parallel_for(0, N, kAtomGrain, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) {
      const Mat3& inv = systems[batch[a]].inverse;
      const double p[3] = {static_cast<double>(pos[3 * a]), static_cast<double>(pos[3 * a + 1]),
                           static_cast<double>(pos[3 * a + 2])};
      for (int k = 0; k < 3; ++k) {
        frac[3 * a + k] = p[0] * inv[0][k] + p[1] * inv[1][k] + p[2] * inv[2][k];
        // Integer wraps and bin arithmetic stay exact far below 2^52.
        TORCH_CHECK_VALUE(std::abs(frac[3 * a + k]) < 1e15, "pos: atom ", a,
                          " is too far from its cell (fractional coordinate ", frac[3 * a + k], ")");
      }
    }
  });
  plan_systems(systems, frac, cutoff);
  const int64_t num_bins =
      B == 0 ? 0 : systems.back().first_bin + systems.back().bins[0] * systems.back().bins[1] * systems.back().bins[2];
  const KeyLayout layout = plan_keys(systems);

  std::vector<int64_t> wrap(3 * N);    // integer cell offsets removed by wrapping
  std::vector<double> wrapped(3 * N);  // Cartesian positions after wrapping
  std::vector<double> binpos(3 * N);   // position in bin units, for pruning the search
  std::vector<int64_t> home(3 * N);    // bin index per axis
  std::vector<int64_t> bin_of(N);
  parallel_for(0, N, kAtomGrain, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) {
      const System& sys = systems[batch[a]];
      int64_t index[3];
      for (int k = 0; k < 3; ++k) {
        double f = frac[3 * a + k];
        int64_t w = 0;
        if (sys.periodic[k]) {
          const double fl = std::floor(f);
          w = static_cast<int64_t>(fl);
          f -= fl;
        }
        double u = (f - sys.origin[k]) * sys.scale[k];
        index[k] = std::min<int64_t>(sys.bins[k] - 1, std::max<int64_t>(0, static_cast<int64_t>(std::floor(u))));
        u = std::min(std::max(u, static_cast<double>(index[k])), static_cast<double>(index[k] + 1));
        wrap[3 * a + k] = w;
        binpos[3 * a + k] = u;
        home[3 * a + k] = index[k];
      }
      for (int c = 0; c < 3; ++c) {
        double p = static_cast<double>(pos[3 * a + c]);
        for (int k = 0; k < 3; ++k) p -= static_cast<double>(wrap[3 * a + k]) * sys.cell[k][c];
        wrapped[3 * a + c] = p;
      }
      bin_of[a] = sys.first_bin + (index[0] * sys.bins[1] + index[1]) * sys.bins[2] + index[2];
    }
  });

  // Candidates are tested on wrapped positions, edges decided by the exact formula on the
  // caller's positions. Both round differently; slack bounds the difference in length (each
  // vector component is a few roundings of numbers below `magnitude`, 64 ulps is generous).
  // Candidates farther than cutoff + slack are no edges; nearer than cutoff - slack they are
  // edges without evaluating the exact formula (unless max_num_neighbors needs the exact d2).
  double max_pos = 0, max_cell_sum = 0;
  int64_t max_shift = 0;
  for (int64_t i = 0; i < 3 * N; ++i) {
    max_pos = std::max(max_pos, std::abs(static_cast<double>(pos[i])));
    max_shift = std::max<int64_t>(max_shift, std::abs(wrap[i]));
  }
  int64_t max_image = 0;
  for (const System& sys : systems) {
    for (int k = 0; k < 3; ++k) {
      if (!sys.periodic[k]) continue;
      max_image = std::max({max_image, std::abs(floor_div(-sys.reach[k], sys.bins[k])),
                            std::abs(floor_div(sys.bins[k] - 1 + sys.reach[k], sys.bins[k]))});
    }
    for (int c = 0; c < 3; ++c)
      max_cell_sum = std::max(max_cell_sum, std::abs(sys.cell[0][c]) + std::abs(sys.cell[1][c]) + std::abs(sys.cell[2][c]));
  }
  const double magnitude = 2.0 * (max_pos + static_cast<double>(2 * max_shift + max_image) * max_cell_sum);
  const double slack = 64.0 * std::numeric_limits<double>::epsilon() * magnitude;
  const double loose2 = (cutoff + slack) * (cutoff + slack) * (1.0 + 1e-9);
  const double sure2 = cutoff > slack ? (cutoff - slack) * (cutoff - slack) * (1.0 - 1e-9) : 0.0;
  const bool exact_always = max_num_neighbors >= 0;

  // --- 3. counting sort by bin; senders' data contiguous, one array per coordinate ----------
  std::vector<int64_t> bin_start(num_bins + 1, 0);
  for (int64_t a = 0; a < N; ++a) bin_start[bin_of[a] + 1] += 1;
  for (int64_t i = 0; i < num_bins; ++i) bin_start[i + 1] += bin_start[i];
  std::vector<int64_t> sorted_atom(N);
  {
    std::vector<int64_t> cursor(bin_start.begin(), bin_start.end() - 1);
    for (int64_t a = 0; a < N; ++a) sorted_atom[cursor[bin_of[a]]++] = a;
  }
  std::vector<double> sorted_wrapped(3 * N), sorted_pos(3 * N);
  std::vector<int64_t> sorted_wrap(3 * N);
  parallel_for(0, N, kAtomGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t a = sorted_atom[t];
      for (int c = 0; c < 3; ++c) {
        sorted_wrapped[c * N + t] = wrapped[3 * a + c];
        sorted_pos[c * N + t] = static_cast<double>(pos[3 * a + c]);
        sorted_wrap[c * N + t] = wrap[3 * a + c];
      }
    }
  });

  // --- 4. search, per receiver, chunks of receivers in bin order ----------------------------
  // Visits every sender image within reach of receiver a and calls emit(sender, shift, d2) for
  // the edges (sender -> a) of the spec, in no particular order.
  const double* wx = sorted_wrapped.data();
  const double* wy = wx + N;
  const double* wz = wy + N;
  const double* px = sorted_pos.data();
  const double* py = px + N;
  const double* pz = py + N;
  const int64_t* sw = sorted_wrap.data();
  const int64_t* atom_of = sorted_atom.data();
  const int64_t* starts = bin_start.data();
  const double* wrapped_data = wrapped.data();
  const double* binpos_data = binpos.data();
  const int64_t* wrap_data = wrap.data();
  const int64_t* home_data = home.data();
  const System* system_data = systems.data();
  // Captures copied to locals: the compiler cannot keep captured references in registers
  // across the stores of emit().
  // The (bin, image) pairs within reach of one bin, shared by all receivers in that bin.
  auto build_stencil = [=](int64_t a, std::vector<Neighbour>& stencil) {
    const System& sys = system_data[batch[a]];
    const int64_t* ha = home_data + 3 * a;
    stencil.clear();
    for (int64_t dx = -sys.reach[0]; dx <= sys.reach[0]; ++dx) {
      const int64_t jx = ha[0] + dx;
      if (!sys.periodic[0] && (jx < 0 || jx >= sys.bins[0])) continue;
      // Bins strictly more than a cutoff apart along a face normal hold no neighbours.
      if (static_cast<double>(std::max<int64_t>(0, std::abs(dx) - 1)) * sys.bin_length[0] > reach_cutoff) continue;
      const int64_t sx = sys.periodic[0] ? floor_div(jx, sys.bins[0]) : 0;
      const int64_t ix = jx - sx * sys.bins[0];
      for (int64_t dy = -sys.reach[1]; dy <= sys.reach[1]; ++dy) {
        const int64_t jy = ha[1] + dy;
        if (!sys.periodic[1] && (jy < 0 || jy >= sys.bins[1])) continue;
        if (static_cast<double>(std::max<int64_t>(0, std::abs(dy) - 1)) * sys.bin_length[1] > reach_cutoff) continue;
        const int64_t sy = sys.periodic[1] ? floor_div(jy, sys.bins[1]) : 0;
        const int64_t iy = jy - sy * sys.bins[1];
        for (int64_t dz = -sys.reach[2]; dz <= sys.reach[2]; ++dz) {
          const int64_t jz = ha[2] + dz;
          if (!sys.periodic[2] && (jz < 0 || jz >= sys.bins[2])) continue;
          if (static_cast<double>(std::max<int64_t>(0, std::abs(dz) - 1)) * sys.bin_length[2] > reach_cutoff) continue;
          const int64_t sz = sys.periodic[2] ? floor_div(jz, sys.bins[2]) : 0;
          const int64_t iz = jz - sz * sys.bins[2];
          const int64_t bin = sys.first_bin + (ix * sys.bins[1] + iy) * sys.bins[2] + iz;
          // Two points of bins whose centres are d apart are at least d - sum|edges| apart.
          double centre[3];
          for (int c = 0; c < 3; ++c)
            centre[c] = static_cast<double>(dx) * sys.bin_edges[0][c] + static_cast<double>(dy) * sys.bin_edges[1][c] +
                        static_cast<double>(dz) * sys.bin_edges[2][c];
          if (centre[0] * centre[0] + centre[1] * centre[1] + centre[2] * centre[2] > sys.bin_reach * sys.bin_reach)
            continue;
          Neighbour nb;
          nb.t0 = starts[bin];
          nb.n = starts[bin + 1] - nb.t0;
          if (nb.n == 0) continue;
          nb.image[0] = sx;
          nb.image[1] = sy;
          nb.image[2] = sz;
          const double j[3] = {static_cast<double>(jx), static_cast<double>(jy), static_cast<double>(jz)};
          // With ~5 atoms per bin the per-bin overhead outweighs the distance tests: a bin whose
          // atoms directly follow the previous entry's, through the same image, extends it (the
          // run's atoms are exactly those of its bins; its bounding box keeps the gap a bound).
          if (!stencil.empty()) {
            Neighbour& last = stencil.back();
            if (last.t0 + last.n == nb.t0 && last.image[0] == sx && last.image[1] == sy && last.image[2] == sz) {
              last.n += nb.n;
              for (int k = 0; k < 3; ++k) {
                last.lo[k] = std::min(last.lo[k], j[k]);
                last.hi[k] = std::max(last.hi[k], j[k]);
              }
              continue;
            }
          }
          for (int k = 0; k < 3; ++k) nb.lo[k] = nb.hi[k] = j[k];
          for (int c = 0; c < 3; ++c)
            nb.offset[c] = static_cast<double>(sx) * sys.cell[0][c] + static_cast<double>(sy) * sys.cell[1][c] +
                           static_cast<double>(sz) * sys.cell[2][c];
          stencil.push_back(nb);
        }
      }
    }
  };

  // Calls emit(sender, shift, d2) for every edge (sender -> a) of the spec, in no particular
  // order. stencil is build_stencil() of a's bin.
  auto search = [=](int64_t a, const std::vector<Neighbour>& stencil, double* d2buf, auto&& emit) {
    const System& sys = system_data[batch[a]];
    const double pa[3] = {wrapped_data[3 * a], wrapped_data[3 * a + 1], wrapped_data[3 * a + 2]};
    const double oa[3] = {static_cast<double>(pos[3 * a]), static_cast<double>(pos[3 * a + 1]),
                          static_cast<double>(pos[3 * a + 2])};
    const int64_t wa[3] = {wrap_data[3 * a], wrap_data[3 * a + 1], wrap_data[3 * a + 2]};
    const double* ua = binpos_data + 3 * a;
    for (const Neighbour& nb : stencil) {
      // Distance from the receiver to the neighbour bin along each face normal: a lower bound
      // on the length of any edge into it, and the exact box distance in orthogonal cells.
      double gap[3];
      for (int k = 0; k < 3; ++k)
        gap[k] = std::max({0.0, nb.lo[k] - ua[k], ua[k] - (nb.hi[k] + 1.0)}) * sys.bin_length[k];
      if (sys.orthogonal ? gap[0] * gap[0] + gap[1] * gap[1] + gap[2] * gap[2] > reach_cutoff2
                         : std::max({gap[0], gap[1], gap[2]}) > reach_cutoff)
        continue;
      // The receiver seen from the sender's image: wrapped_a - (wrapped_b + image @ cell).
      const double rel[3] = {pa[0] - nb.offset[0], pa[1] - nb.offset[1], pa[2] - nb.offset[2]};
      const int64_t t0 = nb.t0, n = nb.n;
      // Distances, a bit mask of the candidates within reach, then a walk over the set bits. Hits are too unpredictable to branch on per candidate.
      for (int64_t block = 0; block < n; block += 64) {
        const int64_t width = std::min<int64_t>(64, n - block);
        const int64_t tb = t0 + block;
        // Two loops: the first is pure arithmetic and vectorises; fused with the mask, it did not.
        for (int64_t i = 0; i < width; ++i) {
          const double vx = rel[0] - wx[tb + i], vy = rel[1] - wy[tb + i], vz = rel[2] - wz[tb + i];
          d2buf[i] = vx * vx + vy * vy + vz * vz;
        }
        uint64_t mask = 0;
        for (int64_t i = 0; i < width; ++i) mask |= static_cast<uint64_t>(d2buf[i] <= loose2) << i;
        for (; mask != 0; mask &= mask - 1) {
          const int64_t i = lowest_bit(mask);
          const int64_t t = tb + i;
          const int64_t b = atom_of[t];
          // pos[a] - pos[b] + shift @ cell == wrapped_a - wrapped_b - image @ cell.
          const int64_t shift[3] = {sw[t] - wa[0] - nb.image[0], sw[N + t] - wa[1] - nb.image[1],
                                    sw[2 * N + t] - wa[2] - nb.image[2]};
          const bool is_self = b == a && shift[0] == 0 && shift[1] == 0 && shift[2] == 0;
          double d2 = d2buf[i];
          if (is_self) {
            if (!self_interaction) continue;
            d2 = 0.0;
          } else if (exact_always || !(d2 < sure2)) {
            // reference.squared_distances, operation for operation.
            const double s0 = static_cast<double>(shift[0]), s1 = static_cast<double>(shift[1]),
                         s2 = static_cast<double>(shift[2]);
            const double ob[3] = {px[t], py[t], pz[t]};
            double v[3];
            for (int c = 0; c < 3; ++c)
              v[c] = (oa[c] - ob[c]) + ((s0 * sys.cell[0][c] + s1 * sys.cell[1][c]) + s2 * sys.cell[2][c]);
            d2 = (v[0] * v[0] + v[1] * v[1]) + v[2] * v[2];
            if (!(d2 < cutoff2)) continue;
          }
          if (half && !keep_half(b, a, shift)) continue;
          emit(b, shift, d2);
        }
      }
    }
  };

  std::vector<int64_t> count(N, 0), full_count(N, 0), chunk_of(N, 0), offset_in_chunk(N, 0);
  const int64_t num_chunks =
      std::max<int64_t>(1, std::min<int64_t>(N / kReceiversPerChunk, 64 * at::get_num_threads()));
  std::vector<std::vector<uint64_t>> key_chunks(layout.fits ? num_chunks : 0);
  std::vector<std::vector<Entry>> entry_chunks(layout.fits ? 0 : num_chunks);
  const bool cut = max_num_neighbors >= 0;

  // Which thread runs a chunk does not change its output.
  run_tasks(num_chunks, [&](int64_t chunk) {
    std::vector<double> d2buf(64);
    std::vector<uint64_t> keys, scratch;
    std::vector<Ranked> ranked;
    std::vector<Candidate> found;
    std::vector<Neighbour> stencil;
    {
      const int64_t lo = N * chunk / num_chunks, hi = N * (chunk + 1) / num_chunks;
      int64_t stencil_bin = -1;
      for (int64_t q = lo; q < hi; ++q) {
        const int64_t a = atom_of[q];
        chunk_of[a] = chunk;
        if (bin_of[a] != stencil_bin) {
          build_stencil(a, stencil);
          stencil_bin = bin_of[a];
        }
        if (layout.fits) {
          std::vector<uint64_t>& out = key_chunks[chunk];
          const int64_t first_atom = systems[batch[a]].first_atom;
          keys.clear();
          ranked.clear();
          search(a, stencil, d2buf.data(), [&](int64_t b, const int64_t* shift, double d2) {
            const uint64_t key = layout.pack(b - first_atom, shift);
            if (cut) {
              ranked.push_back(Ranked{d2, key});
            } else {
              keys.push_back(key);
            }
          });
          if (cut) {
            full_count[a] = static_cast<int64_t>(ranked.size());
            if (full_count[a] > max_num_neighbors) {
              std::nth_element(ranked.begin(), ranked.begin() + max_num_neighbors, ranked.end());
              ranked.resize(max_num_neighbors);
            }
            for (const Ranked& r : ranked) keys.push_back(r.key);
          } else {
            full_count[a] = static_cast<int64_t>(keys.size());
          }
          sort_keys(keys, scratch, layout.bits);
          count[a] = static_cast<int64_t>(keys.size());
          offset_in_chunk[a] = static_cast<int64_t>(out.size());
          out.insert(out.end(), keys.begin(), keys.end());
          if (q - lo == 15) {
            // Size the buffer from the first receivers rather than growing it by copies.
            out.reserve(static_cast<size_t>(1.25 * static_cast<double>(out.size()) / 16.0 * static_cast<double>(hi - lo)) + 64);
          }
        } else {
          std::vector<Entry>& out = entry_chunks[chunk];
          found.clear();
          search(a, stencil, d2buf.data(), [&](int64_t b, const int64_t* shift, double d2) {
            found.push_back(Candidate{b, {shift[0], shift[1], shift[2]}, d2});
          });
          full_count[a] = static_cast<int64_t>(found.size());
          if (cut && full_count[a] > max_num_neighbors) {
            std::nth_element(found.begin(), found.begin() + max_num_neighbors, found.end(), less_distance);
            found.resize(max_num_neighbors);
          }
          std::sort(found.begin(), found.end(), less_sender_shift);
          count[a] = static_cast<int64_t>(found.size());
          offset_in_chunk[a] = static_cast<int64_t>(out.size());
          for (const Candidate& c : found) out.push_back(Entry{c.sender, {c.shift[0], c.shift[1], c.shift[2]}});
        }
      }
    }
  });

  // --- 5. exact output, in receiver order ---------------------------------------------------
  std::vector<int64_t> start(N + 1, 0);
  for (int64_t a = 0; a < N; ++a) start[a + 1] = start[a] + count[a];
  const int64_t E = start[N];
  const auto long_options = pos_t.options().dtype(at::kLong);
  at::Tensor edge_index = empty_huge({2, E}, long_options);
  at::Tensor shifts = empty_huge({E, 3}, long_options);
  at::Tensor num_neighbors = at::empty({N}, long_options);
  int64_t* src_out = edge_index.data_ptr<int64_t>();
  int64_t* dst_out = src_out + E;
  int64_t* shift_out = shifts.data_ptr<int64_t>();
  int64_t* count_out = num_neighbors.data_ptr<int64_t>();
  const int64_t copy_tasks = std::max<int64_t>(1, std::min<int64_t>(N / 256, E / kEdgesPerCopyTask));
  run_tasks(copy_tasks, [&](int64_t task) {
    const int64_t begin = N * task / copy_tasks, end = N * (task + 1) / copy_tasks;
    for (int64_t a = begin; a < end; ++a) {
      count_out[a] = full_count[a];
      const int64_t o = start[a];
      if (layout.fits) {
        const uint64_t* keys = key_chunks[chunk_of[a]].data() + offset_in_chunk[a];
        const int64_t first_atom = systems[batch[a]].first_atom;
        for (int64_t e = 0; e < count[a]; ++e) {
          src_out[o + e] = first_atom + layout.sender(keys[e]);
          dst_out[o + e] = a;
          for (int k = 0; k < 3; ++k) shift_out[3 * (o + e) + k] = layout.shift(keys[e], k);
        }
      } else {
        const Entry* entries = entry_chunks[chunk_of[a]].data() + offset_in_chunk[a];
        for (int64_t e = 0; e < count[a]; ++e) {
          src_out[o + e] = entries[e].sender;
          dst_out[o + e] = a;
          for (int k = 0; k < 3; ++k) shift_out[3 * (o + e) + k] = entries[e].shift[k];
        }
      }
    }
  });
  return {edge_index, shifts, num_neighbors};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> radius_graph(const at::Tensor& pos, const at::Tensor& batch,
                                                            const at::Tensor& cell, const at::Tensor& pbc, double cutoff,
                                                            bool self_interaction, int64_t max_num_neighbors, bool half) {
  TORCH_CHECK(pos.dim() == 2 && pos.size(1) == 3, "radius_graph: pos must have shape (N, 3)");
  TORCH_CHECK(pos.scalar_type() == at::kFloat || pos.scalar_type() == at::kDouble,
              "radius_graph: pos must be float32 or float64");
  TORCH_CHECK(pos.is_contiguous(), "radius_graph: pos must be contiguous");
  TORCH_CHECK(batch.dim() == 1 && batch.size(0) == pos.size(0) && batch.scalar_type() == at::kLong &&
                  batch.is_contiguous(),
              "radius_graph: batch must be a contiguous int64 tensor of shape (N,)");
  TORCH_CHECK(cell.dim() == 3 && cell.size(1) == 3 && cell.size(2) == 3 && cell.scalar_type() == at::kDouble &&
                  cell.is_contiguous(),
              "radius_graph: cell must be a contiguous float64 tensor of shape (B, 3, 3)");
  TORCH_CHECK(pbc.dim() == 2 && pbc.size(0) == cell.size(0) && pbc.size(1) == 3 && pbc.scalar_type() == at::kBool &&
                  pbc.is_contiguous(),
              "radius_graph: pbc must be a contiguous bool tensor of shape (B, 3)");
  TORCH_CHECK(cell.size(0) >= 1 || pos.size(0) == 0, "radius_graph: cell must hold at least one system");
  TORCH_CHECK(std::isfinite(cutoff) && cutoff > 0, "radius_graph: cutoff must be positive and finite");
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "radius_graph", [&] {
    result = radius_graph_impl<scalar_t>(pos, batch, cell, pbc, cutoff, self_interaction, max_num_neighbors, half);
  });
  return result;
}

}  // namespace
}  // namespace eqscale

TORCH_LIBRARY_IMPL(eqscale, CPU, m) { m.impl("radius_graph", &eqscale::radius_graph); }
