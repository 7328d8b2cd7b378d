#include "dense.cu"
