// 2D convolutions on the CPU through oneDNN, as XLA FFI custom calls.
//
// One handler, `OnednnConv`, computes one of three things (attribute `kind`)
// for NHWC activations and HWIO kernels, float32 or bfloat16 operands, always
// a float32 result, in `groups` feature groups (XLA's feature_group_count: the
// kernel is (kh, kw, I / groups, O), group g maps input channels
// [g I/groups, (g+1) I/groups) to outputs [g O/groups, (g+1) O/groups)):
//   0 forward:          (src, weights)   -> dst
//   1 backward data:    (diff_dst, weights) -> diff_src
//   2 backward weights: (src, diff_dst)  -> diff_weights
// with strides (stride_h, stride_w) and explicit non-negative padding
// (pad_top, pad_bottom, pad_left, pad_right). The result's shape (from XLA)
// fixes the remaining sizes. The Python module `stau_jax._onednn_conv` gives
// the handler as a capsule (`handler()`); stau_jax/onednn.py registers it.
//
// oneDNN picks the kernel layout it runs fastest (format `any`); kernels are
// reordered to and from HWIO around each call (a few hundred KB), except a
// forward kernel given already reordered (attribute `packed` = 1) by the
// second handler, `OnednnPack` (`pack_handler()`, `packable(...)`), which
// XLA hoists out of a time loop whose steps share the kernel. Primitives
// are built once per shape and kept; convolutions under 10 million
// multiply-adds, and all kernel reorders, build and run single-threaded
// (kSingleThreadMacs, OneThreadIf). Each calling thread brings its own
// scratchpad and kernel buffers, so concurrent calls from XLA's threads are
// safe.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Problem {
  int64_t kind, batch, in_c, in_h, in_w, out_c, out_h, out_w, kernel_h,
      kernel_w, stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
      groups;
  dt operand_type;

  auto key() const {
    return std::make_tuple(kind, batch, in_c, in_h, in_w, out_c, out_h, out_w,
                           kernel_h, kernel_w, stride_h, stride_w, pad_top,
                           pad_bottom, pad_left, pad_right, groups,
                           static_cast<int>(operand_type));
  }
  bool operator<(const Problem& other) const { return key() < other.key(); }

  // Multiply-adds of the convolution (the same for all three kinds).
  double macs() const {
    return static_cast<double>(batch) * out_h * out_w * out_c * in_c *
           kernel_h * kernel_w / groups;
  }
};

// Below this many multiply-adds a convolution runs on the calling thread
// alone: waking OpenMP's other threads costs about 100 us a call, more than
// they save (measured on 2 cores: 3x3 and 5x5 convolutions inside a jitted
// scan break even at 10-20 million).
constexpr double kSingleThreadMacs = 1e7;

// While alive, oneDNN builds and runs on the calling thread alone if
// `single`. Small convolutions and every kernel reorder (a few hundred KB,
// about 0.1 ms: with two threads their barrier waits on a core XLA keeps busy
// cost up to milliseconds) run single-threaded.
class OneThreadIf {
 public:
  explicit OneThreadIf(bool single)
      : previous_(omp_get_max_threads()), single_(single) {
    if (single_) omp_set_num_threads(1);
  }
  ~OneThreadIf() {
    if (single_) omp_set_num_threads(previous_);
  }

 private:
  int previous_;
  bool single_;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A built primitive with its memory descriptors.
struct Plan {
  dnnl::primitive primitive;
  dnnl::memory::desc src, weights, dst, scratchpad;  // diff_* for backward.
  dnnl::memory::desc user_weights;                   // HWIO.
  dnnl::reorder weights_reorder;                     // user <-> primitive.
  bool reorder_weights = false;
};

Plan Build(const Problem& p) {
  auto& engine = Engine();
  dnnl::memory::dims src_dims = {p.batch, p.in_c, p.in_h, p.in_w};
  // HWIO with I = in_c / groups is oneDNN's hwigo for grouped weights.
  const bool grouped = p.groups > 1;
  dnnl::memory::dims weights_dims =
      grouped ? dnnl::memory::dims{p.groups, p.out_c / p.groups,
                                   p.in_c / p.groups, p.kernel_h, p.kernel_w}
              : dnnl::memory::dims{p.out_c, p.in_c, p.kernel_h, p.kernel_w};
  const tag user_weights_tag = grouped ? tag::hwigo : tag::hwio;
  dnnl::memory::dims dst_dims = {p.batch, p.out_c, p.out_h, p.out_w};
  dnnl::memory::dims strides = {p.stride_h, p.stride_w};
  dnnl::memory::dims pad_l = {p.pad_top, p.pad_left};
  dnnl::memory::dims pad_r = {p.pad_bottom, p.pad_right};
  const dt op = p.operand_type;
  // Operands in the operand type, results in float32.
  const dt src_type = p.kind == kBackwardData ? dt::f32 : op;
  const dt dst_type = p.kind == kForward ? dt::f32 : op;
  const dt weights_type = p.kind == kBackwardWeights ? dt::f32 : op;
  dnnl::memory::desc src(src_dims, src_type, tag::nhwc);
  dnnl::memory::desc dst(dst_dims, dst_type, tag::nhwc);
  dnnl::memory::desc any_weights(weights_dims, weights_type, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  // The forward descriptor every backward needs as a hint.
  dnnl::memory::desc fwd_src(src_dims, op, tag::nhwc);
  dnnl::memory::desc fwd_dst(dst_dims, dt::f32, tag::nhwc);
  dnnl::memory::desc fwd_weights(weights_dims, op, tag::any);
  auto fwd_pd = dnnl::convolution_forward::primitive_desc(
      engine, dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, fwd_src, fwd_weights, fwd_dst,
      strides, pad_l, pad_r, attr);

  Plan plan;
  plan.src = src;
  plan.dst = dst;
  plan.user_weights =
      dnnl::memory::desc(weights_dims, weights_type, user_weights_tag);
  if (p.kind == kForward) {
    plan.primitive = dnnl::convolution_forward(fwd_pd);
    plan.weights = fwd_pd.weights_desc();
    plan.scratchpad = fwd_pd.scratchpad_desc();
  } else if (p.kind == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        engine, dnnl::algorithm::convolution_direct, src, any_weights, dst,
        strides, pad_l, pad_r, fwd_pd, attr);
    plan.primitive = dnnl::convolution_backward_data(pd);
    plan.weights = pd.weights_desc();
    plan.scratchpad = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        engine, dnnl::algorithm::convolution_direct, src, any_weights, dst,
        strides, pad_l, pad_r, fwd_pd, attr);
    plan.primitive = dnnl::convolution_backward_weights(pd);
    plan.weights = pd.diff_weights_desc();
    plan.scratchpad = pd.scratchpad_desc();
  }
  plan.reorder_weights = plan.weights != plan.user_weights;
  if (plan.reorder_weights) {
    OneThreadIf one_thread(true);
    plan.weights_reorder =
        p.kind == kBackwardWeights
            ? dnnl::reorder(dnnl::reorder::primitive_desc(
                  engine, plan.weights, engine, plan.user_weights))
            : dnnl::reorder(dnnl::reorder::primitive_desc(
                  engine, plan.user_weights, engine, plan.weights));
  }
  return plan;
}

// A buffer of at least `bytes`, 64-byte aligned, kept by the calling thread
// across calls (slot 0: scratchpad, 1: reordered kernel): no allocation and
// no fresh pages per call.
void* ThreadBuffer(int slot, size_t bytes) {
  thread_local std::vector<char> buffers[2];
  auto& buffer = buffers[slot];
  if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
  auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
  return reinterpret_cast<void*>((address + 63) & ~std::uintptr_t{63});
}

// oneDNN's type for float32 or bfloat16 buffers; false for any other.
bool OperandType(ffi::DataType type, dt* operand_type) {
  if (type == ffi::DataType::F32) {
    *operand_type = dt::f32;
  } else if (type == ffi::DataType::BF16) {
    *operand_type = dt::bf16;
  } else {
    return false;
  }
  return true;
}

// The attributes both handlers take, in the order of their parameters.
template <typename Binding>
auto WithGeometry(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right")
      .template Attr<int64_t>("groups");
}

const Plan& GetPlan(const Problem& problem) {
  static std::mutex mutex;
  static std::map<Problem, std::unique_ptr<Plan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[problem];
  if (!plan) {
    OneThreadIf threads(problem.macs() < kSingleThreadMacs);
    plan = std::make_unique<Plan>(Build(problem));
  }
  return *plan;
}

ffi::Error Run(ffi::AnyBuffer a, ffi::AnyBuffer b,
               ffi::Result<ffi::AnyBuffer> out, int64_t kind, int64_t stride_h,
               int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
               int64_t pad_left, int64_t pad_right, int64_t groups,
               int64_t packed) {
  if (kind < kForward || kind > kBackwardWeights) {
    return ffi::Error::InvalidArgument("onednn_conv: unknown kind");
  }
  if (groups < 1) {
    return ffi::Error::InvalidArgument("onednn_conv: groups must be >= 1");
  }
  if (a.dimensions().size() != 4 || b.dimensions().size() != 4 ||
      out->dimensions().size() != 4) {
    return ffi::Error::InvalidArgument("onednn_conv: operands must be 4-D");
  }
  if (out->element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("onednn_conv: result must be float32");
  }
  const auto operand = a.element_type();
  dt operand_type;
  if (!OperandType(operand, &operand_type)) {
    return ffi::Error::InvalidArgument(
        "onednn_conv: operands must be float32 or bfloat16");
  }
  if (b.element_type() != operand) {
    return ffi::Error::InvalidArgument(
        "onednn_conv: both operands must have one dtype");
  }
  // Which buffer plays which role: NHWC activations, HWIO kernel.
  ffi::AnyBuffer result = *out;
  const ffi::AnyBuffer src_buffer = kind == kBackwardData ? result : a;
  const ffi::AnyBuffer dst_buffer = kind == kForward         ? result
                                    : kind == kBackwardData ? a
                                                            : b;
  const ffi::AnyBuffer weights_buffer = kind == kBackwardWeights ? result : b;
  auto src = src_buffer.dimensions();
  auto dst = dst_buffer.dimensions();
  auto weights = weights_buffer.dimensions();
  Problem problem{kind,       src[0],     src[3],     src[1],
                  src[2],     dst[3],     dst[1],     dst[2],
                  weights[0], weights[1], stride_h,   stride_w,
                  pad_top,    pad_bottom, pad_left,   pad_right,
                  groups,     operand_type};
  if (weights[2] * groups != src[3] || weights[3] != dst[3] ||
      dst[3] % groups != 0 || src[0] != dst[0]) {
    return ffi::Error::InvalidArgument("onednn_conv: inconsistent shapes");
  }
  try {
    const Plan& plan = GetPlan(problem);
    OneThreadIf threads(problem.macs() < kSingleThreadMacs);
    auto& engine = Engine();
    thread_local dnnl::stream stream(engine);
    dnnl::memory src_memory(plan.src, engine, src_buffer.untyped_data());
    dnnl::memory dst_memory(plan.dst, engine, dst_buffer.untyped_data());
    dnnl::memory user_weights(plan.user_weights, engine,
                              weights_buffer.untyped_data());
    dnnl::memory weights_memory = user_weights;
    if (packed) {  // Already in the forward primitive's layout (Pack).
      if (kind != kForward ||
          plan.weights.get_size() != plan.user_weights.get_size()) {
        return ffi::Error::InvalidArgument(
            "onednn_conv: only forward kernels of unchanged size are packed");
      }
      weights_memory =
          dnnl::memory(plan.weights, engine, weights_buffer.untyped_data());
    } else if (plan.reorder_weights) {
      weights_memory = dnnl::memory(
          plan.weights, engine, ThreadBuffer(1, plan.weights.get_size()));
      if (kind != kBackwardWeights) {
        OneThreadIf one_thread(true);
        plan.weights_reorder.execute(stream, user_weights, weights_memory);
        stream.wait();
      }
    }
    dnnl::memory scratchpad(plan.scratchpad, engine,
                            ThreadBuffer(0, plan.scratchpad.get_size()));
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SCRATCHPAD, scratchpad}};
    if (kind == kForward) {
      args[DNNL_ARG_SRC] = src_memory;
      args[DNNL_ARG_WEIGHTS] = weights_memory;
      args[DNNL_ARG_DST] = dst_memory;
    } else if (kind == kBackwardData) {
      args[DNNL_ARG_DIFF_SRC] = src_memory;
      args[DNNL_ARG_WEIGHTS] = weights_memory;
      args[DNNL_ARG_DIFF_DST] = dst_memory;
    } else {
      args[DNNL_ARG_SRC] = src_memory;
      args[DNNL_ARG_DIFF_WEIGHTS] = weights_memory;
      args[DNNL_ARG_DIFF_DST] = dst_memory;
    }
    plan.primitive.execute(stream, args);
    if (plan.reorder_weights && kind == kBackwardWeights) {
      stream.wait();
      OneThreadIf one_thread(true);
      plan.weights_reorder.execute(stream, weights_memory, user_weights);
    }
    stream.wait();
  } catch (const dnnl::error& error) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + error.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConv, Run,
                              WithGeometry(ffi::Ffi::Bind()
                                               .Arg<ffi::AnyBuffer>()
                                               .Arg<ffi::AnyBuffer>()
                                               .Ret<ffi::AnyBuffer>()
                                               .Attr<int64_t>("kind"))
                                  .Attr<int64_t>("packed"));

namespace {

// The forward problem of a convolution given by its shapes, for Pack and
// Packable: input (batch, in_h, in_w, in_c), output
// (out_h, out_w, out_c), kernel (kernel_h, kernel_w, in_c / groups, out_c).
Problem ForwardProblem(int64_t batch, int64_t in_h, int64_t in_w, int64_t in_c,
                       int64_t out_h, int64_t out_w, int64_t out_c,
                       int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                       int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                       int64_t pad_left, int64_t pad_right, int64_t groups,
                       dt operand_type) {
  return Problem{kForward, batch,    in_c,     in_h,     in_w,
                 out_c,    out_h,    out_w,    kernel_h, kernel_w,
                 stride_h, stride_w, pad_top,  pad_bottom, pad_left,
                 pad_right, groups,  operand_type};
}

// The HWIO kernel `b` reordered into the layout the forward primitive of the
// given convolution reads (`packed` = 1 in Run then skips that reorder). A
// call with the kernel alone as operand, so XLA hoists it out of the time
// loop where the kernel is the same at every step.
ffi::Error Pack(ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                int64_t batch, int64_t in_h, int64_t in_w, int64_t out_h,
                int64_t out_w, int64_t stride_h, int64_t stride_w,
                int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                int64_t pad_right, int64_t groups) {
  auto weights = b.dimensions();
  if (weights.size() != 4 || out->dimensions().size() != 4 ||
      out->element_type() != b.element_type() || groups < 1) {
    return ffi::Error::InvalidArgument("onednn_pack: bad operands");
  }
  dt operand_type;
  if (!OperandType(b.element_type(), &operand_type)) {
    return ffi::Error::InvalidArgument(
        "onednn_pack: kernels must be float32 or bfloat16");
  }
  Problem problem = ForwardProblem(
      batch, in_h, in_w, weights[2] * groups, out_h, out_w, weights[3],
      weights[0], weights[1], stride_h, stride_w, pad_top, pad_bottom,
      pad_left, pad_right, groups, operand_type);
  try {
    const Plan& plan = GetPlan(problem);
    if (plan.weights.get_size() != plan.user_weights.get_size() ||
        plan.weights.get_size() != out->size_bytes()) {
      return ffi::Error::InvalidArgument(
          "onednn_pack: the packed kernel changes size");
    }
    auto& engine = Engine();
    thread_local dnnl::stream stream(engine);
    OneThreadIf one_thread(true);
    dnnl::memory user_weights(plan.user_weights, engine, b.untyped_data());
    dnnl::memory packed(plan.weights, engine, out->untyped_data());
    if (plan.reorder_weights) {
      plan.weights_reorder.execute(stream, user_weights, packed);
    } else {
      dnnl::reorder(user_weights, packed).execute(stream, user_weights, packed);
    }
    stream.wait();
  } catch (const dnnl::error& error) {
    return ffi::Error::Internal(std::string("onednn_pack: ") + error.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnPack, Pack,
                              WithGeometry(ffi::Ffi::Bind()
                                               .Arg<ffi::AnyBuffer>()
                                               .Ret<ffi::AnyBuffer>()
                                               .Attr<int64_t>("batch")
                                               .Attr<int64_t>("in_h")
                                               .Attr<int64_t>("in_w")
                                               .Attr<int64_t>("out_h")
                                               .Attr<int64_t>("out_w")));

namespace {

PyObject* Handler(PyObject*, PyObject*) {
  return PyCapsule_New(reinterpret_cast<void*>(&OnednnConv), nullptr, nullptr);
}

PyObject* PackHandler(PyObject*, PyObject*) {
  return PyCapsule_New(reinterpret_cast<void*>(&OnednnPack), nullptr, nullptr);
}

// Whether the forward primitive of a convolution reads its kernel in a
// layout of the kernel's own size (so Pack can run): arguments batch, in_h,
// in_w, in_c, out_h, out_w, out_c, kernel_h, kernel_w, stride_h, stride_w,
// pad_top, pad_bottom, pad_left, pad_right, groups, bfloat16 (0 or 1).
PyObject* Packable(PyObject*, PyObject* args) {
  long long v[17];
  if (!PyArg_ParseTuple(args, "LLLLLLLLLLLLLLLLL", &v[0], &v[1], &v[2], &v[3],
                        &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10],
                        &v[11], &v[12], &v[13], &v[14], &v[15], &v[16])) {
    return nullptr;
  }
  Problem problem = ForwardProblem(v[0], v[1], v[2], v[3], v[4], v[5], v[6],
                                   v[7], v[8], v[9], v[10], v[11], v[12],
                                   v[13], v[14], v[15],
                                   v[16] ? dt::bf16 : dt::f32);
  try {
    const Plan& plan = GetPlan(problem);
    return PyBool_FromLong(plan.weights.get_size() ==
                           plan.user_weights.get_size());
  } catch (const dnnl::error& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

PyMethodDef kMethods[] = {
    {"handler", Handler, METH_NOARGS,
     "The XLA FFI handler OnednnConv as a capsule, for "
     "jax.ffi.register_ffi_target."},
    {"pack_handler", PackHandler, METH_NOARGS,
     "The XLA FFI handler OnednnPack as a capsule."},
    {"packable", Packable, METH_VARARGS,
     "Whether a forward convolution's kernel can be packed (see Pack)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_onednn_conv",
                       "oneDNN convolutions as an XLA FFI handler.", -1,
                       kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__onednn_conv() { return PyModule_Create(&kModule); }
