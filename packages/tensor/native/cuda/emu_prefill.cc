#include "prefill.cu"
