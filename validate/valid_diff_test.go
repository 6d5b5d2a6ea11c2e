package validate

import (
	stdjson "encoding/json"
	"testing"

	segjson "github.com/segmentio/encoding/json"
)

// FuzzValidAgreesWithEncodingJSON checks that the fast validator accepts
// exactly what encoding/json.Valid accepts.
func FuzzValidAgreesWithEncodingJSON(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `{"a":1}`, `"\u00e9"`, "\"\xff\"", `1e999`, `-0`, `01`, ` [1, 2] `, `{"a":}`, "\"\x01\"", `"\ud800"`, `nul`, `[1,]`, `{"a":1}{}`, "[\"\xed\xa0\x80\"]"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if std, seg := stdjson.Valid(b), segjson.Valid(b); std != seg {
			t.Fatalf("Valid(%q): encoding/json %v, segmentio %v", b, std, seg)
		}
	})
}
