#ifndef DNA_CZLIB_SHIM_H
#define DNA_CZLIB_SHIM_H
#include <zlib.h>
#endif
