#ifndef DNA_CSODIUM_SHIM_H
#define DNA_CSODIUM_SHIM_H
#include <sodium.h>
#endif
