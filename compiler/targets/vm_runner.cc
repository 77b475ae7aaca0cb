// Runs a compiled edgecam library (a Relax VM executable) on inputs read from .npy files and writes
// its outputs as .npy files: how an aarch64 artifact is executed under qemu-user on an x86
// workstation (compiler/targets/arm_emulation.py builds this file with the cross g++ and runs it).
// It follows what tvm.runtime.vm.VirtualMachine does in Python, through tvm-ffi's C++ API.
//
// usage: vm_runner LIBRARY DIR SAMPLES INPUTS PARAMS [TRANSFORM]
//   reads  DIR/param_<j>.npy (j < PARAMS) and DIR/sample_<i>_input_<k>.npy (i < SAMPLES, k < INPUTS)
//   calls  TRANSFORM(params) once when given (a tuple in, a tuple out), then main(inputs..., params...)
//   writes DIR/sample_<i>_output_<m>.npy for every tensor of main's (possibly nested) result
// Exit status 0 on success; otherwise the error is on stderr.

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int kCPU = 1;             // DLPack kDLCPU
constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR
constexpr size_t kAlignment = 64;    // TVM's kernels assume 64-byte aligned buffers

struct AlignedCPUAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = ffi::GetDataSize(*tensor);
    bytes = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    tensor->data = std::aligned_alloc(kAlignment, bytes == 0 ? kAlignment : bytes);
    if (tensor->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

// .npy type strings (numpy's `descr`) this runner reads and writes, all little-endian.
struct NpyType {
  const char* descr;
  DLDataType dtype;
};
const NpyType kNpyTypes[] = {
    {"<f4", {kDLFloat, 32, 1}}, {"<f8", {kDLFloat, 64, 1}}, {"<f2", {kDLFloat, 16, 1}},
    {"|i1", {kDLInt, 8, 1}},    {"<i2", {kDLInt, 16, 1}},   {"<i4", {kDLInt, 32, 1}},
    {"<i8", {kDLInt, 64, 1}},   {"|u1", {kDLUInt, 8, 1}},   {"<u2", {kDLUInt, 16, 1}},
    {"<u4", {kDLUInt, 32, 1}},  {"<u8", {kDLUInt, 64, 1}},  {"|b1", {kDLBool, 8, 1}},
};

DLDataType DTypeOf(const std::string& descr, const std::string& path) {
  for (const NpyType& type : kNpyTypes) {
    if (descr == type.descr) return type.dtype;
  }
  throw std::runtime_error(path + ": unsupported .npy dtype " + descr);
}

std::string DescrOf(DLDataType dtype) {
  for (const NpyType& type : kNpyTypes) {
    if (type.dtype.code == dtype.code && type.dtype.bits == dtype.bits &&
        type.dtype.lanes == dtype.lanes) {
      return type.descr;
    }
  }
  throw std::runtime_error("cannot write an output of dtype " +
                           std::string(ffi::DLDataTypeToString(dtype)));
}

// The value after `'key':` in a .npy header dict, up to the next top-level comma or brace.
std::string HeaderField(const std::string& header, const std::string& key, const std::string& path) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error(path + ": .npy header lacks " + key);
  at = header.find(':', at) + 1;
  while (header[at] == ' ') ++at;
  size_t end = header[at] == '(' ? header.find(')', at) + 1 : header.find_first_of(",}", at);
  return header.substr(at, end - at);
}

ffi::Tensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t len16 = 0;
    in.read(reinterpret_cast<char*>(&len16), 2);
    header_len = len16;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  std::string descr = HeaderField(header, "descr", path);
  descr = descr.substr(1, descr.size() - 2);  // strip the quotes
  if (HeaderField(header, "fortran_order", path) != "False") {
    throw std::runtime_error(path + ": Fortran-ordered arrays are not supported");
  }
  std::vector<int64_t> shape;
  std::stringstream dims(HeaderField(header, "shape", path).substr(1));
  for (std::string dim; std::getline(dims, dim, ',');) {
    if (dim.find_first_of("0123456789") != std::string::npos) shape.push_back(std::stoll(dim));
  }
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                                DTypeOf(descr, path), DLDevice{kDLCPU, 0});
  size_t bytes = ffi::GetDataSize(*tensor.GetDLTensorPtr());
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes));
  if (static_cast<size_t>(in.gcount()) != bytes) throw std::runtime_error(path + ": truncated data");
  return tensor;
}

void WriteNpy(const std::string& path, const ffi::Tensor& tensor) {
  const DLTensor* dl = tensor.GetDLTensorPtr();
  if (dl->device.device_type != kDLCPU) throw std::runtime_error("output is not on the CPU");
  if (!tensor.IsContiguous()) throw std::runtime_error("output is not contiguous");
  std::string shape = "(";
  for (int i = 0; i < dl->ndim; ++i) {
    shape += std::to_string(dl->shape[i]) + (dl->ndim == 1 ? "," : i + 1 < dl->ndim ? ", " : "");
  }
  shape += ")";
  std::string header =
      "{'descr': '" + DescrOf(dl->dtype) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // numpy pads the header with spaces and a newline so the data starts 64-byte aligned.
  size_t total = 10 + header.size() + 1;
  header.append((kAlignment - total % kAlignment) % kAlignment, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  uint16_t len16 = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.write(reinterpret_cast<const char*>(&len16), 2);
  out << header;
  out.write(static_cast<const char*>(dl->data) + dl->byte_offset,
            static_cast<std::streamsize>(ffi::GetDataSize(*dl)));
  if (!out) throw std::runtime_error("cannot write " + path);
}

// main returns a tensor or a (nested) tuple of tensors; Python's verify flattens it the same way.
void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto tensor = value.as<ffi::Tensor>()) {
    out->push_back(*tensor);
  } else if (auto tuple = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *tuple) Flatten(item, out);
  } else {
    throw std::runtime_error("main returned a value that is neither a tensor nor a tuple: " +
                             value.GetTypeKey());
  }
}

ffi::Function Require(const ffi::Module& module, const std::string& name) {
  ffi::Optional<ffi::Function> func = module->GetFunction(name, false);
  if (!func.has_value()) throw std::runtime_error("the library has no function " + name);
  return *func;
}

int Run(int argc, char** argv) {
  if (argc < 6 || argc > 7) {
    std::cerr << "usage: " << argv[0] << " LIBRARY DIR SAMPLES INPUTS PARAMS [TRANSFORM]\n";
    return 2;
  }
  const std::string dir = argv[2];
  const int samples = std::stoi(argv[3]), inputs = std::stoi(argv[4]), params = std::stoi(argv[5]);

  ffi::Module library = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = Require(library, "vm_load_executable")().cast<ffi::Module>();
  Require(vm, "vm_initialization")(kCPU, 0, kPooledAllocator);
  ffi::Function main_fn = Require(vm, "main");

  std::vector<ffi::Any> weights;
  for (int j = 0; j < params; ++j) {
    weights.emplace_back(ReadNpy(dir + "/param_" + std::to_string(j) + ".npy"));
  }
  if (argc == 7) {  // e.g. main_transform_params: runs once, as on a camera at load
    ffi::Array<ffi::Any> packed(weights.begin(), weights.end());
    ffi::Array<ffi::Any> transformed = Require(vm, argv[6])(packed).cast<ffi::Array<ffi::Any>>();
    weights.assign(transformed.begin(), transformed.end());
  }

  for (int i = 0; i < samples; ++i) {
    const std::string prefix = dir + "/sample_" + std::to_string(i);
    std::vector<ffi::Any> args;
    for (int k = 0; k < inputs; ++k) {
      args.emplace_back(ReadNpy(prefix + "_input_" + std::to_string(k) + ".npy"));
    }
    args.insert(args.end(), weights.begin(), weights.end());
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    ffi::Any result;
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    std::vector<ffi::Tensor> outputs;
    Flatten(result, &outputs);
    for (size_t m = 0; m < outputs.size(); ++m) {
      WriteNpy(prefix + "_output_" + std::to_string(m) + ".npy", outputs[m]);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const ffi::Error& error) {
    std::cerr << error.kind() << ": " << error.message() << "\n" << error.TracebackMostRecentCallLast();
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
  }
  return 1;
}
