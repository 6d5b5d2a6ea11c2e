// Package ascii holds the byte-level text helpers that HTTP's
// case-insensitive tokens (header names, media types, directives) need on
// the request path, where converting to strings would allocate.
package ascii

// EqualFoldLower reports whether b equals lower, ignoring the case of b's
// ASCII letters. lower must already be lower case (a constant such as
// "cache-control"); its upper-case letters never match. It does not
// allocate.
func EqualFoldLower(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
