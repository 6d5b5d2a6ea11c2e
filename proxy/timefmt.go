package proxy

import (
	"strconv"
	"time"
)

// stampCache formats trail timestamps. Lines within one second share their
// "2006-01-02T15:04:05" prefix, so it is formatted once per second and the
// fraction appended: the output is time.RFC3339Nano in UTC, at a fraction
// of AppendFormat's cost. The zero value is ready; a stampCache is not safe
// for concurrent use (each pooled trail has its own).
type stampCache struct {
	sec    int64 // Unix second the prefix is for
	prefix [len("2006-01-02T15:04:05")]byte
	ok     bool
}

// appendRFC3339Nano appends t in UTC as time.RFC3339Nano does: the
// fraction without trailing zeros, none at all on a whole second.
func (c *stampCache) appendRFC3339Nano(b []byte, t time.Time) []byte {
	t = t.UTC()
	sec := t.Unix()
	if !c.ok || sec != c.sec {
		if y := t.Year(); y < 0 || y > 9999 { // outside RFC 3339: AppendFormat's business
			return t.AppendFormat(b, time.RFC3339Nano)
		}
		t.Truncate(time.Second).AppendFormat(c.prefix[:0], "2006-01-02T15:04:05")
		c.sec, c.ok = sec, true
	}
	b = append(b, c.prefix[:]...)
	if ns := t.Nanosecond(); ns > 0 {
		var frac [10]byte
		frac[0] = '.'
		for i := 9; i > 0; i-- {
			frac[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 10
		for frac[n-1] == '0' {
			n--
		}
		b = append(b, frac[:n]...)
	}
	return append(b, 'Z')
}

// appendMillis appends d in milliseconds with three decimals (microsecond
// precision), as strconv.AppendFloat(b, µs/1000, 'f', 3, 64) would, without
// floating point.
func appendMillis(b []byte, d time.Duration) []byte {
	us := d.Microseconds()
	if us < 0 {
		b = append(b, '-')
		us = -us
	}
	b = strconv.AppendInt(b, us/1000, 10)
	frac := us % 1000
	return append(b, '.', byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
}
