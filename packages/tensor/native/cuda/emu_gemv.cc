#include "gemv.cu"
