package config

import (
	"fmt"
	"math"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// checkShape walks raw config values against the Go type they will decode
// into and reports every unknown key and every value of the wrong shape,
// each with its path (routes[2].retyr). Decoding after a clean check cannot
// fail, so all shape errors reach the user at once and with their paths.
func checkShape(path string, v any, t reflect.Type) []error {
	_, errs := shape(path, v, t)
	return errs
}

// pruneShape is checkShape that also returns v without the values it
// rejected, so the rest of the config can still be decoded and validated
// and every problem reported in one pass.
func pruneShape(path string, v any, t reflect.Type) (any, []error) { return shape(path, v, t) }

func shape(path string, v any, t reflect.Type) (any, []error) {
	errs := shapeErrs(path, v, t)
	if len(errs) == 0 {
		return v, nil
	}
	// Drop the offending keys; keep the structure around them.
	switch x := v.(type) {
	case map[string]any:
		if tt := deref(t); tt.Kind() == reflect.Struct {
			fields := fieldsByKey(tt)
			out := make(map[string]any, len(x))
			for k, e := range x {
				ft, ok := fields[k]
				if !ok {
					continue
				}
				if pv, es := shape(join(path, k), e, ft); len(es) == 0 {
					out[k] = e
				} else if pv != nil {
					if _, isMap := pv.(map[string]any); isMap {
						out[k] = pv
					}
					if _, isList := pv.([]any); isList {
						out[k] = pv
					}
				}
			}
			return out, errs
		}
	case []any:
		if tt := deref(t); tt.Kind() == reflect.Slice {
			out := make([]any, len(x))
			for i, e := range x {
				out[i], _ = shape(fmt.Sprintf("%s[%d]", path, i), e, tt.Elem())
			}
			return out, errs
		}
	}
	return nil, errs
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

func shapeErrs(path string, v any, t reflect.Type) []error {
	if v == nil {
		return nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t {
	case reflect.TypeFor[Duration]():
		s, ok := scalarString(v)
		if !ok {
			return []error{pathErr(path, "must be a duration such as 30s")}
		}
		if _, err := ParseDuration(s); err != nil {
			return []error{pathErr(path, err.Error())}
		}
		return nil
	case reflect.TypeFor[Size]():
		s, ok := scalarString(v)
		if !ok {
			return []error{pathErr(path, "must be a size such as 10MiB")}
		}
		if _, err := ParseSize(s); err != nil {
			return []error{pathErr(path, err.Error())}
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return []error{pathErr(path, fmt.Sprintf("must be a mapping, not %s", describe(v)))}
		}
		fields := fieldsByKey(t)
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var errs []error
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				msg := "unknown key"
				if s := suggest(k, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				errs = append(errs, pathErr(join(path, k), msg))
				continue
			}
			errs = append(errs, shapeErrs(join(path, k), m[k], ft)...)
		}
		return errs
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			if t.Elem().Kind() == reflect.String {
				if _, ok := v.(string); ok {
					return nil // a comma-free single word; decoded as a one-element list
				}
			}
			return []error{pathErr(path, fmt.Sprintf("must be a list, not %s", describe(v)))}
		}
		var errs []error
		for i, e := range l {
			errs = append(errs, shapeErrs(fmt.Sprintf("%s[%d]", path, i), e, t.Elem())...)
		}
		return errs
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return []error{pathErr(path, fmt.Sprintf("must be a mapping, not %s", describe(v)))}
		}
		var errs []error
		for k, e := range m {
			errs = append(errs, shapeErrs(join(path, k), e, t.Elem())...)
		}
		return errs
	case reflect.String:
		if _, ok := scalarString(v); !ok {
			return []error{pathErr(path, fmt.Sprintf("must be a string, not %s", describe(v)))}
		}
	case reflect.Bool:
		switch x := v.(type) {
		case bool:
		case string:
			if _, err := strconv.ParseBool(x); err != nil {
				return []error{pathErr(path, fmt.Sprintf("must be true or false, not %q", x))}
			}
		default:
			return []error{pathErr(path, fmt.Sprintf("must be true or false, not %s", describe(v)))}
		}
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint32, reflect.Uint64:
		if msg := checkNumber(v, true); msg != "" {
			return []error{pathErr(path, msg)}
		}
	case reflect.Float64, reflect.Float32:
		if msg := checkNumber(v, false); msg != "" {
			return []error{pathErr(path, msg)}
		}
	}
	return nil
}

// decimalInt and decimalFloat are the number forms a string may hold
// (environment overrides and ${NAME} references are strings).
var (
	decimalInt   = regexp.MustCompile(`^[+-]?(0|[1-9][0-9]*)$`)
	decimalFloat = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$`)
)

// checkNumber says why v, the raw value of a number key (an integer one
// when whole), is not a number that key can hold; "" when it is. It is the
// one place every number key of the config is checked:
//
//   - a YAML number must be finite: NaN compares false with every bound a
//     key's rule sets (rps: .nan would pass "between 0 and 1000000" and
//     mean no limit), and an infinity is no setting either;
//   - a whole number must be integral and fit in 64 bits;
//   - a string must hold a plain decimal number. Hexadecimal ("0x10"),
//     underscores ("1_000") and, for integers, leading zeros ("010", which
//     the decoder would read as octal 8) are refused rather than read
//     otherwise than they look. YAML's own number forms (0x10 unquoted)
//     are YAML's business: they arrive here as numbers.
func checkNumber(v any, whole bool) string {
	want := "a number"
	if whole {
		want = "a whole number"
	}
	var f float64
	switch x := v.(type) {
	case int, int64, int32:
		return ""
	case uint64:
		if x > math.MaxInt64 {
			return fmt.Sprintf("%d is out of range (at most %d)", x, int64(math.MaxInt64))
		}
		return ""
	case float64:
		f = x
	case float32:
		f = float64(x)
	case string:
		if g, err := strconv.ParseFloat(x, 64); err == nil && (math.IsNaN(g) || math.IsInf(g, 0)) {
			return fmt.Sprintf("must be a finite number, not %q", x)
		}
		if whole {
			if !decimalInt.MatchString(x) {
				return fmt.Sprintf("must be %s in decimal, not %q", want, x)
			}
			if _, err := strconv.ParseInt(x, 10, 64); err != nil {
				return fmt.Sprintf("%q is out of range (at most %d)", x, int64(math.MaxInt64))
			}
			return ""
		}
		if !decimalFloat.MatchString(x) {
			return fmt.Sprintf("must be %s in decimal, not %q", want, x)
		}
		g, err := strconv.ParseFloat(x, 64)
		if err != nil || math.IsInf(g, 0) {
			return fmt.Sprintf("%q is out of range", x)
		}
		return ""
	default:
		return fmt.Sprintf("must be %s, not %s", want, describe(v))
	}
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return fmt.Sprintf("must be a finite number, not %v", f)
	case whole && f != math.Trunc(f):
		return fmt.Sprintf("must be a whole number, not %v", f)
	case whole && (f >= 1<<63 || f <= -(1<<63)): // -(1<<63) may be a rounded -(1<<63)-1
		return fmt.Sprintf("%v is out of range (at most %d)", f, int64(math.MaxInt64))
	}
	return ""
}

// fieldsByKey maps each koanf key of struct t to its field type, looking
// through squashed embedded structs.
func fieldsByKey(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("koanf")
		if tag == ",squash" {
			for k, v := range fieldsByKey(f.Type) {
				out[k] = v
			}
			continue
		}
		if tag == "" || tag == "-" {
			continue
		}
		out[tag] = f.Type
	}
	return out
}

func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case int, int64, int32, uint64, float64, float32:
		return fmt.Sprint(x), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}

func describe(v any) string {
	switch x := v.(type) {
	case map[string]any:
		return "a mapping"
	case []any:
		return "a list"
	case string:
		return strconv.Quote(x)
	default:
		return fmt.Sprint(x)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// suggest returns the known key closest to k when it is a likely typo.
func suggest(k string, fields map[string]reflect.Type) string {
	best, bestD := "", 3
	for f := range fields {
		if d := editDistance(strings.ToLower(k), f); d < bestD || (d == bestD && f < best) {
			best, bestD = f, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
