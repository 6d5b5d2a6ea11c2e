package validate

import (
	"strings"
	"testing"
)

func TestCheckHead(t *testing.T) {
	tests := []struct {
		name      string
		cfg       Config
		status    int
		ct        string
		wantCheck string // "" means pass
		wantInDet string
	}{
		{name: "zero config passes anything", status: 500, ct: ""},
		{name: "class 2xx allows 204", cfg: Config{Status: []string{"2xx"}}, status: 204},
		{name: "class 2xx rejects 503", cfg: Config{Status: []string{"2xx"}}, status: 503, wantCheck: CheckStatus, wantInDet: "got 503, want 2xx"},
		{name: "upper-case class", cfg: Config{Status: []string{"2XX"}}, status: 299},
		{name: "exact code", cfg: Config{Status: []string{"200"}}, status: 200},
		{name: "exact code rejects neighbour", cfg: Config{Status: []string{"200"}}, status: 201, wantCheck: CheckStatus},
		{name: "range inclusive high", cfg: Config{Status: []string{"200-204"}}, status: 204},
		{name: "range excludes", cfg: Config{Status: []string{"200-204"}}, status: 205, wantCheck: CheckStatus},
		{name: "several entries", cfg: Config{Status: []string{"2xx", "404"}}, status: 404},
		{name: "content type exact", cfg: Config{ContentType: []string{"application/json"}}, status: 200, ct: "application/json"},
		{name: "content type params and case ignored", cfg: Config{ContentType: []string{"application/json"}}, status: 200, ct: " Application/JSON ; charset=utf-8"},
		{name: "content type mismatch", cfg: Config{ContentType: []string{"application/json"}}, status: 200, ct: "text/html; charset=utf-8", wantCheck: CheckContentType, wantInDet: `got "text/html", want application/json`},
		{name: "content type missing", cfg: Config{ContentType: []string{"application/json"}}, status: 200, ct: "", wantCheck: CheckContentType, wantInDet: "got none"},
		{name: "suffix is not special", cfg: Config{ContentType: []string{"application/json"}}, status: 200, ct: "application/problem+json", wantCheck: CheckContentType},
		{name: "wildcard subtype", cfg: Config{ContentType: []string{"text/*"}}, status: 200, ct: "text/event-stream"},
		{name: "wildcard subtype needs subtype", cfg: Config{ContentType: []string{"text/*"}}, status: 200, ct: "text/", wantCheck: CheckContentType},
		{name: "wildcard subtype other type", cfg: Config{ContentType: []string{"text/*"}}, status: 200, ct: "textual/plain", wantCheck: CheckContentType},
		{name: "any type", cfg: Config{ContentType: []string{"*/*"}}, status: 200, ct: "image/png"},
		{name: "any type still needs a header", cfg: Config{ContentType: []string{"*/*"}}, status: 200, ct: "", wantCheck: CheckContentType},
		{name: "status checked before content type", cfg: Config{Status: []string{"2xx"}, ContentType: []string{"application/json"}}, status: 502, ct: "text/html", wantCheck: CheckStatus},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			var ct []byte
			if tt.ct != "" {
				ct = []byte(tt.ct)
			}
			f := v.CheckHead(tt.status, ct)
			assertFailure(t, f, tt.wantCheck, tt.wantInDet)
		})
	}
}

func TestIsStream(t *testing.T) {
	tests := []struct {
		name string
		ct   string
		want bool
	}{
		{name: "plain", ct: "text/event-stream", want: true},
		{name: "params and case", ct: "Text/Event-Stream; charset=utf-8", want: true},
		{name: "json", ct: "application/json", want: false},
		{name: "empty", ct: "", want: false},
		{name: "NDJSON (Ollama)", ct: "application/x-ndjson", want: true},
		{name: "NDJSON params and case", ct: "Application/NDJSON ; charset=utf-8", want: true},
		{name: "JSON Lines", ct: "application/jsonl", want: true},
		{name: "JSON Lines, x-", ct: "application/x-jsonlines", want: true},
		{name: "JSON text sequences", ct: "application/json-seq", want: true},
		{name: "a prefix is not a match", ct: "application/x-ndjsonx", want: false},
		{name: "a JSON suffix is no stream", ct: "application/problem+json", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsStream([]byte(tt.ct)); got != tt.want {
				t.Errorf("IsStream(%q) = %v, want %v", tt.ct, got, tt.want)
			}
		})
	}
}

func TestNilValidatorPasses(t *testing.T) {
	var v *Validator
	if v.NeedsBody() || v.MaxBody() != 0 || v.CheckHead(500, nil) != nil || v.CheckBody([]byte("x")) != nil || v.Check(500, nil, nil) != nil {
		t.Fatal("nil validator must pass everything and need nothing")
	}
}

func TestNeedsBody(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want bool
	}{
		{name: "head only", cfg: Config{Status: []string{"2xx"}, ContentType: []string{"text/event-stream"}}, want: false},
		{name: "json", cfg: Config{JSON: true}, want: true},
		{name: "schema", cfg: Config{Schema: `{"type":"object"}`}, want: true},
		{name: "jsonrpc", cfg: Config{JSONRPC: true}, want: true},
		{name: "provider error", cfg: Config{ProviderError: true}, want: true},
		{name: "non empty", cfg: Config{NonEmpty: true}, want: true},
		{name: "max body", cfg: Config{MaxBody: 10}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if got := v.NeedsBody(); got != tt.want {
				t.Errorf("NeedsBody() = %v, want %v", got, tt.want)
			}
		})
	}
}

func assertFailure(t *testing.T, f *Failure, wantCheck, wantInDetail string) {
	t.Helper()
	if wantCheck == "" {
		if f != nil {
			t.Fatalf("want pass, got %v", f)
		}
		return
	}
	if f == nil {
		t.Fatalf("want %s failure, got pass", wantCheck)
	}
	if f.Check != wantCheck {
		t.Fatalf("check = %q (%v), want %q", f.Check, f, wantCheck)
	}
	if wantInDetail != "" && !strings.Contains(f.Detail, wantInDetail) {
		t.Fatalf("detail = %q, want it to contain %q", f.Detail, wantInDetail)
	}
}
