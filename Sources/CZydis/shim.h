// Zydis ships no pkg-config file; its status macros are function-like, so they get inline copies here.
#include <Zydis/Zydis.h>

static inline int vmm_zyan_success(ZyanStatus status) { return ZYAN_SUCCESS(status); }
