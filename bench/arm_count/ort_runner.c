/* Runs an ONNX model `runs` times with ONNX Runtime's C API on one thread, for bench/bench_arm.py to
 * count its instructions under qemu-user beside edgecam's runner. The wheel carries libonnxruntime.so
 * but no header, so the few entries of the OrtApi function table used here are reached by their
 * index; the table only ever grows at its end (ORT's ABI promise), and its indices are those of the
 * OrtApi struct in include/onnxruntime/core/session/onnxruntime_c_api.h.
 *
 *   ort_runner MODEL INPUT_NAME INPUT.f32 DIM,DIM,... OUTPUT_NAME OUTPUT_ELEMENTS RUNS OUTPUT.f32
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct OrtStatus OrtStatus;
typedef void *Handle;
typedef struct {
    void **(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;
const OrtApiBase *OrtGetApiBase(void);

enum {
    API_VERSION = 13, /* any version the library serves: the indices below exist since then */
    GET_ERROR_MESSAGE = 2,
    CREATE_ENV = 3,
    CREATE_SESSION = 7,
    RUN = 9,
    CREATE_SESSION_OPTIONS = 10,
    SET_INTRA_OP_NUM_THREADS = 24,
    SET_INTER_OP_NUM_THREADS = 25,
    CREATE_TENSOR_WITH_DATA = 49,
    GET_TENSOR_MUTABLE_DATA = 51,
    CREATE_CPU_MEMORY_INFO = 69,
};
enum { LOGGING_ERROR = 3, DEVICE_ALLOCATOR = 0, MEM_TYPE_DEFAULT = 0, ELEMENT_FLOAT = 1 };

static void **api;

static void check(OrtStatus *status, const char *what) {
    if (status != NULL) {
        const char *(*message)(const OrtStatus *) = (const char *(*)(const OrtStatus *))api[GET_ERROR_MESSAGE];
        fprintf(stderr, "ort_runner: %s failed: %s\n", what, message(status));
        exit(1);
    }
}

static void *read_file(const char *path, size_t *size) {
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        perror(path);
        exit(1);
    }
    fseek(file, 0, SEEK_END);
    *size = (size_t)ftell(file);
    fseek(file, 0, SEEK_SET);
    void *data = malloc(*size);
    if (fread(data, 1, *size, file) != *size) {
        perror(path);
        exit(1);
    }
    fclose(file);
    return data;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s MODEL INPUT_NAME INPUT.f32 DIMS OUTPUT_NAME OUTPUT_ELEMENTS RUNS OUTPUT.f32\n",
                argv[0]);
        return 2;
    }
    api = OrtGetApiBase()->GetApi(API_VERSION);
    if (api == NULL) {
        fprintf(stderr, "ort_runner: the library does not serve API version %d\n", API_VERSION);
        return 1;
    }
    int64_t shape[8];
    size_t rank = 0;
    for (char *dim = strtok(argv[4], ","); dim != NULL && rank < 8; dim = strtok(NULL, ",")) {
        shape[rank++] = strtoll(dim, NULL, 10);
    }
    size_t input_bytes;
    void *input = read_file(argv[3], &input_bytes);

    Handle env, options, session, memory, value;
    check(((OrtStatus * (*)(int, const char *, Handle *)) api[CREATE_ENV])(LOGGING_ERROR, "bench", &env), "CreateEnv");
    check(((OrtStatus * (*)(Handle *)) api[CREATE_SESSION_OPTIONS])(&options), "CreateSessionOptions");
    check(((OrtStatus * (*)(Handle, int)) api[SET_INTRA_OP_NUM_THREADS])(options, 1), "SetIntraOpNumThreads");
    check(((OrtStatus * (*)(Handle, int)) api[SET_INTER_OP_NUM_THREADS])(options, 1), "SetInterOpNumThreads");
    check(((OrtStatus * (*)(Handle, const char *, Handle, Handle *)) api[CREATE_SESSION])(env, argv[1], options, &session),
          "CreateSession");
    check(((OrtStatus * (*)(int, int, Handle *)) api[CREATE_CPU_MEMORY_INFO])(DEVICE_ALLOCATOR, MEM_TYPE_DEFAULT, &memory),
          "CreateCpuMemoryInfo");
    check(((OrtStatus * (*)(Handle, void *, size_t, const int64_t *, size_t, int, Handle *))
               api[CREATE_TENSOR_WITH_DATA])(memory, input, input_bytes, shape, rank, ELEMENT_FLOAT, &value),
          "CreateTensorWithDataAsOrtValue");

    const char *inputs[1] = {argv[2]}, *outputs[1] = {argv[5]};
    Handle result = NULL;
    long runs = strtol(argv[7], NULL, 10);
    for (long i = 0; i < runs; i++) {
        result = NULL; /* each run allocates its output; the few leaked are not counted work */
        check(((OrtStatus * (*)(Handle, Handle, const char *const *, const Handle *, size_t, const char *const *, size_t,
                                Handle *)) api[RUN])(session, NULL, inputs, &value, 1, outputs, 1, &result),
              "Run");
    }
    float *data;
    check(((OrtStatus * (*)(Handle, void **)) api[GET_TENSOR_MUTABLE_DATA])(result, (void **)&data), "GetTensorMutableData");
    FILE *out = fopen(argv[8], "wb");
    size_t elements = (size_t)strtoull(argv[6], NULL, 10);
    if (out == NULL || fwrite(data, sizeof(float), elements, out) != elements) {
        perror(argv[8]);
        return 1;
    }
    fclose(out);
    return 0;
}
