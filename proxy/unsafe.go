package proxy

import "unsafe"

// unsafeString views b as a string without copying. The caller must not
// keep the string past the life of b.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
