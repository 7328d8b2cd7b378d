#include "kv.cu"
