// Operator schemas of eqscale._C. Only this file defines the library; each kernel file registers
// its implementations with TORCH_LIBRARY_IMPL(eqscale, <dispatch key>, m), so that schemas stay in
// one place and backends (CPU here, others later) can be added without touching each other.
#include <torch/extension.h>

TORCH_LIBRARY(eqscale, m) {
  // Spherical harmonics (csrc/cpu/spherical_harmonics.cpp): the forward, its backward and the
  // backward of the backward, on (N, 3) contiguous vectors that are already normalised.
  m.def("spherical_harmonics_fwd(Tensor vectors, Tensor coefficients, int lmax) -> Tensor");
  m.def("spherical_harmonics_bwd(Tensor vectors, Tensor grad_sh, Tensor coefficients, int lmax) -> Tensor");
  m.def(
      "spherical_harmonics_bwd_bwd(Tensor vectors, Tensor grad_sh, Tensor grad_grad_vectors, "
      "Tensor coefficients, int lmax) -> (Tensor, Tensor)");
  // Radius graph (csrc/cpu/radius_graph.cpp): pos (N, 3), batch (N,) sorted int64, cell (B, 3, 3)
  // float64, pbc (B, 3) bool; max_num_neighbors < 0 means no limit. Returns edge_index (2, E),
  // shifts (E, 3) and the per-receiver edge counts before the max_num_neighbors cut (N,).
  m.def(
      "radius_graph(Tensor pos, Tensor batch, Tensor cell, Tensor pbc, float cutoff, bool self_interaction, "
      "int max_num_neighbors, bool half) -> (Tensor, Tensor, Tensor)");
  // SO(2) convolution rotations (csrc/cpu/so2_conv.cpp): the trilinear form of
  // eqscale/ops/so2_conv/__init__.py with slot open_slot (0 node, 1 wigner, 2 edge) open.
  m.def("so2_rotate_contract(Tensor? node, Tensor? wigner, Tensor? edge, Tensor index, int num_nodes, int open_slot, int lmax, int mmax) -> Tensor");
  // Radial modulation of the SO(2) maps' inputs (csrc/cpu/so2_conv.cpp): edge_feats (E, K, C) times
  // radial (E, K_half, C), one radial row per (l, |m|); the backward returns (grad_edge_feats,
  // grad_radial), a (0,) tensor for each one not needed.
  m.def("so2_radial_scale(Tensor edge_feats, Tensor radial, int lmax, int mmax) -> Tensor");
  m.def("so2_radial_scale_backward(Tensor grad, Tensor edge_feats, Tensor radial, int lmax, int mmax, bool need_edge_feats, bool need_radial) -> (Tensor, Tensor)");
  // An uninitialised tensor of `size` with the dtype of `like`, from the buffer pool of large CPU
  // outputs (csrc/cpu/memory.h): the PyTorch-written intermediates of the SO(2) maps.
  m.def("empty_pooled(Tensor like, int[] size) -> Tensor");
  // SO(2) convolution Wigner-D (csrc/cpu/so2_wigner.cpp): packed blocks D_0..D_lmax (E, sum_l (2l+1)^2)
  // of rotations (E, 3, 3) by the Ivanic-Ruedenberg recursion, and their vector-Jacobian product.
  m.def("so2_wigner_from_rotation(Tensor rotations, int lmax) -> Tensor");
  m.def("so2_wigner_from_rotation_backward(Tensor rotations, Tensor grad, int lmax) -> Tensor");
  // Fused tensor-product convolution (csrc/cpu/tp_conv.cpp): the 4-linear form of
  // eqscale/ops/tp_conv/__init__.py with slot open_slot (0..3) open, i.e. its gradient there.
  m.def("tp_conv_contract(Tensor? node_feats, Tensor? edge_attrs, Tensor? edge_weights, Tensor? grad_out, Tensor edge_index, int num_nodes, int open_slot, Tensor paths, Tensor cg_index, Tensor cg_value, int layout, int[] sizes, bool deterministic, int flops_per_edge) -> Tensor");
  // Its backward: the open slots 0, 1 and 2 at once given grad_out (bit mask wanted: 1 node_feats,
  // 2 edge_attrs, 4 edge_weights; the others come back as empty (0,) tensors).
  m.def("tp_conv_backward(Tensor node_feats, Tensor edge_attrs, Tensor? edge_weights, Tensor grad_out, Tensor edge_index, int num_nodes, int wanted, Tensor paths, Tensor cg_index, Tensor cg_value, int layout, int[] sizes, bool deterministic, int flops_per_edge) -> (Tensor, Tensor, Tensor)");
  // The double backward: the gradients of <cot_node_feats, g_x> + <cot_edge_attrs, g_y> +
  // <cot_edge_weights, g_w> with respect to node_feats, edge_attrs and edge_weights, where (g_x, g_y, g_w)
  // is tp_conv_backward's output; one sweep over the edges for all three.
  m.def("tp_conv_double_backward(Tensor node_feats, Tensor edge_attrs, Tensor edge_weights, Tensor grad_out, Tensor cot_node_feats, Tensor cot_edge_attrs, Tensor cot_edge_weights, Tensor edge_index, int num_nodes, Tensor paths, Tensor cg_index, Tensor cg_value, int layout, int[] sizes, bool deterministic, int flops_per_edge) -> (Tensor, Tensor, Tensor)");
}

// Importing eqscale._C is what runs the registrations above; the module itself exports nothing.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "eqscale C++ kernels; the operators live in torch.ops.eqscale";
}
