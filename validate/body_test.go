package validate

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const priceSchema = `{
  "type": "object",
  "required": ["items"],
  "properties": {
    "items": {
      "type": "array",
      "items": {
        "type": "object",
        "required": ["price"],
        "properties": {"price": {"type": "number", "minimum": 0}}
      }
    }
  }
}`

func TestCheckBody(t *testing.T) {
	tests := []struct {
		name          string
		cfg           Config
		body          string
		wantCheck     string
		wantDetail    string // exact, when set
		wantRetryable bool
	}{
		{name: "json ok", cfg: Config{JSON: true}, body: `{"a":[1,2,{"b":null}]}`},
		{name: "json syntax error names offset", cfg: Config{JSON: true}, body: `{"a": 1, "b": x}`, wantCheck: CheckJSON,
			wantDetail: "invalid character 'x' looking for beginning of value at offset 15"},
		{name: "json empty body passes: no body, nothing to parse", cfg: Config{JSON: true, JSONRPC: true}, body: ``},
		{name: "empty body with non_empty", cfg: Config{JSON: true, NonEmpty: true}, body: ``, wantCheck: CheckNonEmpty, wantDetail: "empty body"},
		{name: "json trailing garbage", cfg: Config{JSON: true}, body: `{} {}`, wantCheck: CheckJSON},
		{name: "non empty rejects empty", cfg: Config{NonEmpty: true}, body: ``, wantCheck: CheckNonEmpty, wantDetail: "empty body"},
		{name: "non empty accepts text", cfg: Config{NonEmpty: true}, body: `ok`},
		{name: "max body exact limit passes", cfg: Config{MaxBody: 4}, body: `1234`},
		{name: "max body over limit", cfg: Config{MaxBody: 4}, body: `12345`, wantCheck: CheckMaxBody, wantDetail: "got 5 bytes, want <= 4"},
		{name: "max body before json", cfg: Config{MaxBody: 2, JSON: true}, body: `xxxx`, wantCheck: CheckMaxBody},

		{name: "schema passes", cfg: Config{Schema: priceSchema}, body: `{"items":[{"price":1.5},{"price":0}]}`},
		{name: "schema minimum names pointer and keyword", cfg: Config{Schema: priceSchema}, body: `{"items":[{"price":-1}]}`,
			wantCheck: CheckSchema, wantDetail: "/items/0/price: minimum: got -1, want >= 0"},
		{name: "schema required at root", cfg: Config{Schema: priceSchema}, body: `{}`,
			wantCheck: CheckSchema, wantDetail: "(root): required: missing property 'items'"},
		{name: "schema type", cfg: Config{Schema: priceSchema}, body: `{"items":[{"price":"1"}]}`,
			wantCheck: CheckSchema, wantDetail: "/items/0/price: type: got string, want number"},
		{name: "schema counts further errors", cfg: Config{Schema: priceSchema}, body: `{"items":[{"price":-1},{"price":-2}]}`,
			wantCheck: CheckSchema, wantDetail: "/items/0/price: minimum: got -1, want >= 0 (and 1 more)"},
		{name: "schema implies json", cfg: Config{Schema: priceSchema}, body: `{"items":`, wantCheck: CheckJSON},
		{name: "schema pointer escapes", cfg: Config{Schema: `{"properties":{"a/b~c":{"type":"string"}}}`}, body: `{"a/b~c":1}`,
			wantCheck: CheckSchema, wantDetail: "/a~1b~0c: type: got number, want string"},

		{name: "jsonrpc result", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}`},
		{name: "jsonrpc error", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error"}}`,
			wantCheck: CheckJSONRPC, wantDetail: `error -32603 "Internal error"`},
		{name: "jsonrpc retryable code", cfg: Config{JSONRPC: true, RetryableRPCCodes: []int{-32603}},
			body:      `{"jsonrpc":"2.0","id":"a","error":{"code":-32603,"message":"Internal error"}}`,
			wantCheck: CheckJSONRPC, wantRetryable: true},
		{name: "jsonrpc unlisted code not retryable", cfg: Config{JSONRPC: true, RetryableRPCCodes: []int{-32000}},
			body:      `{"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"Method not found"}}`,
			wantCheck: CheckJSONRPC, wantDetail: `error -32601 "Method not found"`},
		{name: "jsonrpc error with null id", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}`,
			wantCheck: CheckJSONRPC, wantDetail: `error -32700 "Parse error"`},
		{name: "jsonrpc wrong version", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"1.0","id":1,"result":1}`,
			wantCheck: CheckJSONRPC, wantDetail: `missing "jsonrpc": "2.0"`},
		{name: "jsonrpc missing id", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","result":1}`, wantCheck: CheckJSONRPC, wantDetail: `missing "id"`},
		{name: "jsonrpc missing result", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","id":1}`, wantCheck: CheckJSONRPC, wantDetail: `missing "result"`},
		{name: "jsonrpc both members", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":""}}`,
			wantCheck: CheckJSONRPC, wantDetail: `both "result" and "error"`},
		{name: "jsonrpc null result is a result", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","id":1,"result":null}`},
		{name: "jsonrpc escaped key", cfg: Config{JSONRPC: true}, body: `{"json\u0072pc":"2.0","id":1,"result":true}`},
		{name: "jsonrpc not an object", cfg: Config{JSONRPC: true}, body: `"hello"`, wantCheck: CheckJSONRPC, wantDetail: "response is not an object"},
		{name: "jsonrpc batch ok", cfg: Config{JSONRPC: true}, body: `[{"jsonrpc":"2.0","id":1,"result":1},{"jsonrpc":"2.0","id":2,"result":2}]`},
		{name: "jsonrpc batch names element", cfg: Config{JSONRPC: true},
			body:      `[{"jsonrpc":"2.0","id":1,"result":1},{"jsonrpc":"2.0","id":2,"error":{"code":-32000,"message":"busy"}}]`,
			wantCheck: CheckJSONRPC, wantDetail: `[1]: error -32000 "busy"`},
		{name: "jsonrpc empty batch", cfg: Config{JSONRPC: true}, body: `[]`, wantCheck: CheckJSONRPC, wantDetail: "empty batch"},
		{name: "jsonrpc malformed error", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","id":1,"error":"boom"}`,
			wantCheck: CheckJSONRPC, wantDetail: `malformed error member: "boom"`},
		{name: "jsonrpc fractional code", cfg: Config{JSONRPC: true}, body: `{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"x"}}`,
			wantCheck: CheckJSONRPC, wantDetail: "error with non-integer code 1.5"},
		{name: "jsonrpc implies json", cfg: Config{JSONRPC: true}, body: `event: message`, wantCheck: CheckJSON},

		{name: "provider error openai", cfg: Config{ProviderError: true},
			body:      `{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}`,
			wantCheck: CheckProviderError, wantDetail: `type "server_error" message "The server had an error"`, wantRetryable: true},
		{name: "provider error anthropic overloaded", cfg: Config{ProviderError: true},
			body:      `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}`,
			wantCheck: CheckProviderError, wantDetail: `type "overloaded_error" message "Overloaded"`, wantRetryable: true},
		{name: "provider error google", cfg: Config{ProviderError: true},
			body:      `{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}`,
			wantCheck: CheckProviderError, wantDetail: `code 503 status "UNAVAILABLE" message "The model is overloaded."`, wantRetryable: true},
		{name: "provider error invalid request not retryable", cfg: Config{ProviderError: true},
			body:      `{"error":{"message":"bad","type":"invalid_request_error","code":"invalid_api_key"}}`,
			wantCheck: CheckProviderError, wantDetail: `code "invalid_api_key" type "invalid_request_error" message "bad"`},
		{name: "provider error string", cfg: Config{ProviderError: true}, body: `{"error":"nope"}`,
			wantCheck: CheckProviderError, wantDetail: `message "nope"`},
		{name: "provider error null passes", cfg: Config{ProviderError: true}, body: `{"error":null,"data":[]}`},
		{name: "provider error nested is not top level", cfg: Config{ProviderError: true}, body: `{"data":{"error":{"message":"x"}}}`},
		{name: "provider error ignores non-json", cfg: Config{ProviderError: true}, body: `plain text`},
		{name: "provider error ignores arrays", cfg: Config{ProviderError: true}, body: `[{"error":1}]`},
		{name: "jsonrpc runs before provider error", cfg: Config{JSONRPC: true, ProviderError: true},
			body:      `{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error"}}`,
			wantCheck: CheckJSONRPC},
		{name: "provider error runs before schema", cfg: Config{ProviderError: true, Schema: priceSchema},
			body:      `{"error":{"message":"x"}}`,
			wantCheck: CheckProviderError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			f := v.CheckBody([]byte(tt.body))
			assertFailure(t, f, tt.wantCheck, "")
			if f == nil {
				return
			}
			if tt.wantDetail != "" && f.Detail != tt.wantDetail {
				t.Errorf("detail = %q, want %q", f.Detail, tt.wantDetail)
			}
			if f.Retryable != tt.wantRetryable {
				t.Errorf("retryable = %v, want %v", f.Retryable, tt.wantRetryable)
			}
			if !errors.Is(f, ErrInvalid) {
				t.Errorf("failure does not match ErrInvalid")
			}
			if want := "validate: " + f.Check + ": " + f.Detail; f.Error() != want {
				t.Errorf("Error() = %q, want %q", f.Error(), want)
			}
		})
	}
}

func TestCheckProviderErrorOnlyOn2xx(t *testing.T) {
	v, err := New(Config{Status: []string{"2xx", "404"}, ProviderError: true})
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"error":{"message":"not found"}}`)
	if f := v.Check(404, nil, body); f != nil {
		t.Errorf("404 with error envelope: got %v, want pass (the envelope is the status's explanation)", f)
	}
	if f := v.Check(200, nil, body); f == nil || f.Check != CheckProviderError {
		t.Errorf("200 with error envelope: got %v, want provider_error", f)
	}
	if f := v.Check(500, nil, body); f == nil || f.Check != CheckStatus {
		t.Errorf("500: got %v, want status failure", f)
	}
}

func TestSchemaFile(t *testing.T) {
	dir := t.TempDir()
	item := `{"type":"object","required":["price"],"properties":{"price":{"type":"number","minimum":0}}}`
	root := `{"type":"object","properties":{"items":{"type":"array","items":{"$ref":"item.json"}}}}`
	if err := os.WriteFile(filepath.Join(dir, "item.json"), []byte(item), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "root.json")
	if err := os.WriteFile(path, []byte(root), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := New(Config{SchemaFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if f := v.CheckBody([]byte(`{"items":[{"price":2}]}`)); f != nil {
		t.Fatalf("valid body: %v", f)
	}
	f := v.CheckBody([]byte(`{"items":[{"price":2},{"price":-3}]}`))
	if f == nil || f.Detail != "/items/1/price: minimum: got -3, want >= 0" {
		t.Fatalf("got %v, want the $ref'd minimum failure at /items/1/price", f)
	}
}

func TestNewConfigErrors(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		wantFields []string
		wantText   string
	}{
		{name: "bad status words", cfg: Config{Status: []string{"2xx", "2yx", "600", "300-200"}},
			wantFields: []string{"status[1]", "status[2]", "status[3]"}},
		{name: "bad content type", cfg: Config{ContentType: []string{"json", "*/json", "application/json"}},
			wantFields: []string{"content_type[0]", "content_type[1]"}},
		{name: "negative max body", cfg: Config{MaxBody: -1}, wantFields: []string{"max_body"}},
		{name: "rpc codes without jsonrpc", cfg: Config{RetryableRPCCodes: []int{-32603}}, wantFields: []string{"retryable_rpc_codes"}},
		{name: "both schema forms", cfg: Config{Schema: `{}`, SchemaFile: "x.json"}, wantFields: []string{"schema"}},
		{name: "inline schema not json", cfg: Config{Schema: `{"type":`}, wantFields: []string{"schema"}, wantText: "not JSON"},
		{name: "inline schema breaks meta-schema", cfg: Config{Schema: `{"type":"strin","minimum":"0"}`}, wantFields: []string{"schema"},
			wantText: "/minimum: type: got string, want number"},
		{name: "inline schema relative ref", cfg: Config{Schema: `{"$ref":"other.json"}`}, wantFields: []string{"schema"}},
		{name: "missing schema file", cfg: Config{SchemaFile: "/nonexistent/schema.json"}, wantFields: []string{"schema_file"}},
		{name: "all at once", cfg: Config{Status: []string{"x"}, ContentType: []string{"y"}, MaxBody: -5},
			wantFields: []string{"status[0]", "content_type[0]", "max_body"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := New(tt.cfg)
			if err == nil {
				t.Fatalf("New() = %v, want error", v)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("error %v does not match ErrConfig", err)
			}
			var fields []string
			for _, e := range unjoin(err) {
				var ce *ConfigError
				if !errors.As(e, &ce) {
					t.Fatalf("error %v is not a *ConfigError", e)
				}
				fields = append(fields, ce.Field)
			}
			if len(fields) != len(tt.wantFields) {
				t.Fatalf("fields = %v, want %v (%v)", fields, tt.wantFields, err)
			}
			for i := range fields {
				if fields[i] != tt.wantFields[i] {
					t.Errorf("fields = %v, want %v", fields, tt.wantFields)
				}
			}
			if tt.wantText != "" && !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not contain %q", err, tt.wantText)
			}
		})
	}
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
