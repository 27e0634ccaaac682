// harness.cpp -- the kernels (fused network, value checks), compiled by g++
// on the CPU emulator into a shared library that Python drives through ctypes
// (arrseg.cuda.emulation.EmulatedKernels).
//
// Build (one library per kernel configuration; the -D options are the ones
// the GPU compile gets, from arrseg.cuda.limits.KernelConfig.defines):
//   g++ -std=c++17 -O1 -pthread -fPIC -shared -I arrseg/cuda -D...
//       arrseg/cuda/emulation/harness.cpp -o libarrseg_emulated.so
//
// Exports, for each kernel NAME in the table below:
//   arrseg_emulated_signature(name) -> e.g. "*f *q *f *f i i *f" ('*' pointer,
//       f float, d double, i int, q long long), so that Python can check the
//       exact C type of every argument it passes;
//   arrseg_emulated_launch(name, gx, gy, gz, bx, by, bz, params) runs the
//       launch; params[i] points to the value of argument i, as in the CUDA
//       driver's cuLaunchKernel. Returns 0, or -1 for an unknown name;
//   arrseg_emulated_configure(poison_shared, random_schedule, seed) sets
//       what the next launches do (cuda_cpu.h's arrseg_emu::settings);
//   arrseg_emulated_shared_bytes() -> the bytes of all __shared__ variables
//       that poisoning fills (0 in an AddressSanitizer build, which does not
//       poison).
#include "cuda_cpu.h"

#include <string.h>

#include <type_traits>
#include <utility>

// found through -I (the kernels' directory), after this file's directory
#include "fused_forward.cu"
#include "fused_backward.cu"
#include "check_values.cu"

namespace {

template <typename T>
struct type_code;
template <> struct type_code<float> { static constexpr char value = 'f'; };
template <> struct type_code<double> { static constexpr char value = 'd'; };
template <> struct type_code<int> { static constexpr char value = 'i'; };
template <> struct type_code<long long> { static constexpr char value = 'q'; };

// appends the code of parameter type T ("*f", "i", ...) and a space
template <typename T>
void append_code(char *&out)
{
    if constexpr (std::is_pointer_v<T>) {
        *out++ = '*';
        *out++ = type_code<std::remove_cv_t<std::remove_pointer_t<T>>>::value;
    } else {
        *out++ = type_code<std::remove_cv_t<T>>::value;
    }
    *out++ = ' ';
}

// "*f *q i ..." into buf (at least 3 bytes per parameter + 1)
template <typename... Params>
void signature(void (*)(Params...), char *buf)
{
    char *out = buf;
    (append_code<Params>(out), ...);
    if (out != buf)
        --out;  // the last space
    *out = '\0';
}

template <typename... Params, std::size_t... I>
void launch_unpacked(dim3 grid, dim3 block, void (*kernel)(Params...), void **params,
                     std::index_sequence<I...>)
{
    emulate_launch(grid, block, kernel,
                   *static_cast<std::remove_reference_t<Params> *>(params[I])...);
}

template <typename... Params>
void launch(dim3 grid, dim3 block, void (*kernel)(Params...), void **params)
{
    launch_unpacked(grid, block, kernel, params, std::index_sequence_for<Params...>{});
}

// calls f(kernel) for the kernel called `name`; false if there is none
template <typename F>
bool with_kernel(const char *name, F &&f)
{
#define ARRSEG_EMU_KERNEL(k) \
    if (strcmp(name, #k) == 0) { f(&k); return true; }
    ARRSEG_EMU_KERNEL(arrseg_fused_forward)
    ARRSEG_EMU_KERNEL(arrseg_fused_backward)
    ARRSEG_EMU_KERNEL(arrseg_reduce_partials)
    ARRSEG_EMU_KERNEL(arrseg_check_values)
#undef ARRSEG_EMU_KERNEL
    return false;
}

}  // namespace

// the library is built with -fvisibility=hidden: only these are exported
#define ARRSEG_EMU_EXPORT __attribute__((visibility("default")))

extern "C" {

// Writes the signature of kernel `name` into buf (NUL-terminated, at most
// size bytes); returns its length, or -1 for an unknown name.
ARRSEG_EMU_EXPORT int arrseg_emulated_signature(const char *name, char *buf, int size)
{
    char s[256];
    if (!with_kernel(name, [&](auto kernel) { signature(kernel, s); }))
        return -1;
    snprintf(buf, (size_t)size, "%s", s);
    return (int)strlen(s);
}

ARRSEG_EMU_EXPORT int arrseg_emulated_launch(const char *name, unsigned int gx, unsigned int gy,
                           unsigned int gz, unsigned int bx, unsigned int by,
                           unsigned int bz, void **params)
{
    const dim3 grid(gx, gy, gz), block(bx, by, bz);
    return with_kernel(name, [&](auto kernel) { launch(grid, block, kernel, params); })
               ? 0 : -1;
}

ARRSEG_EMU_EXPORT void arrseg_emulated_configure(int poison_shared, int random_schedule,
                                                unsigned long long seed)
{
    arrseg_emu::settings.poison_shared = poison_shared != 0;
    arrseg_emu::settings.random_schedule = random_schedule != 0;
    arrseg_emu::settings.seed = seed;
}

ARRSEG_EMU_EXPORT unsigned long arrseg_emulated_shared_bytes(void)
{
    return arrseg_emu::shared_bytes();
}

// The configuration's workspace row length, for the tests of the Python side.
ARRSEG_EMU_EXPORT int arrseg_emulated_partial_length(void) { return PARTIAL_LEN; }

}  // extern "C"
