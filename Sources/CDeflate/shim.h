#ifndef DNA_CDEFLATE_SHIM_H
#define DNA_CDEFLATE_SHIM_H
#include <libdeflate.h>
#endif
