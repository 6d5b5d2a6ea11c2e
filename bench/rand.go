package bench

import "hash/fnv"

// draw is a small deterministic generator (splitmix64) seeded from a run
// seed, a request key and an ordinal, so a request's fate does not depend
// on how concurrent requests interleave.
type draw struct{ s uint64 }

func newDraw(seed int64, key []byte, n uint64) draw {
	h := fnv.New64a()
	_, _ = h.Write(key)
	return draw{s: uint64(seed)*0x9e3779b97f4a7c15 ^ h.Sum64() ^ (n+1)*0xbf58476d1ce4e5b9}
}

func (d *draw) next() uint64 {
	d.s += 0x9e3779b97f4a7c15
	z := d.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// float returns a value uniform in [0,1).
func (d *draw) float() float64 { return float64(d.next()>>11) / (1 << 53) }
