#include "policy.cu"
