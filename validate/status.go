package validate

import (
	"strconv"
	"strings"
)

// statusRange is an inclusive range of status codes.
type statusRange struct{ lo, hi int }

// parseStatus parses "2xx", "200" or "200-299" (case-insensitive).
func parseStatus(s string) (statusRange, bool) {
	s = strings.TrimSpace(s)
	if len(s) == 3 && (s[1] == 'x' || s[1] == 'X') && (s[2] == 'x' || s[2] == 'X') {
		if s[0] < '1' || s[0] > '5' {
			return statusRange{}, false
		}
		base := int(s[0]-'0') * 100
		return statusRange{base, base + 99}, true
	}
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		l, okL := parseCode(strings.TrimSpace(lo))
		h, okH := parseCode(strings.TrimSpace(hi))
		if !okL || !okH || l > h {
			return statusRange{}, false
		}
		return statusRange{l, h}, true
	}
	c, ok := parseCode(s)
	return statusRange{c, c}, ok
}

func parseCode(s string) (int, bool) {
	if len(s) != 3 {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 100 || n > 599 {
		return 0, false
	}
	return n, true
}

// statusAllowed reports whether code falls in any range; no ranges allow all.
func statusAllowed(ranges []statusRange, code int) bool {
	if len(ranges) == 0 {
		return true
	}
	for _, r := range ranges {
		if code >= r.lo && code <= r.hi {
			return true
		}
	}
	return false
}
