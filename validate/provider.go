package validate

import (
	"encoding/json"
	"strconv"
	"strings"
)

// checkProviderError rejects a well-formed JSON body whose top level is an
// object with a non-null "error" member. The pass path does not allocate.
func checkProviderError(body []byte) *Failure {
	obj, ok := newObjectIter(body)
	if !ok {
		return nil
	}
	for {
		key, val, ok := obj.next()
		if !ok {
			return nil
		}
		if keyIs(key, "error") && !isNullish(val) {
			return providerFailure(val)
		}
	}
}

// providerFailure describes an error member: a string, or an object with
// some of code, status, type and message (OpenAI, Anthropic and Google
// shapes).
func providerFailure(raw []byte) *Failure {
	var msg string
	if json.Unmarshal(raw, &msg) == nil {
		return &Failure{Check: CheckProviderError, Detail: "message " + strconv.Quote(truncate(msg, maxQuoted))}
	}
	var e struct {
		Code    any `json:"code"`
		Status  any `json:"status"`
		Type    any `json:"type"`
		Message any `json:"message"`
	}
	if json.Unmarshal(raw, &e) != nil {
		return &Failure{Check: CheckProviderError, Detail: truncate(string(raw), maxQuoted)}
	}
	var parts []string
	code, status, typ := scalar(e.Code), scalar(e.Status), scalar(e.Type)
	if code != "" {
		if _, isText := e.Code.(string); isText {
			parts = append(parts, "code "+strconv.Quote(code))
		} else {
			parts = append(parts, "code "+code)
		}
	}
	if status != "" {
		parts = append(parts, "status "+strconv.Quote(status))
	}
	if typ != "" {
		parts = append(parts, "type "+strconv.Quote(typ))
	}
	if m := scalar(e.Message); m != "" {
		parts = append(parts, "message "+strconv.Quote(truncate(m, maxQuoted)))
	}
	detail := strings.Join(parts, " ")
	if detail == "" {
		detail = truncate(string(raw), maxQuoted)
	}
	f := &Failure{Check: CheckProviderError, Detail: detail, Denial: providerDenial(code, status, typ)}
	// A spent quota is often reported with a rate-limit code (OpenAI's
	// insufficient_quota under 429): the denial, more specific, wins.
	f.Retryable = f.Denial == "" && transientProviderError(code, status, typ)
	return f
}

// providerDenial reports whether an error envelope says the credentials or
// the quota are the problem, which no wait or retry changes: DenialAuth,
// DenialQuota, or "".
func providerDenial(code, status, typ string) string {
	switch code {
	case "401", "403":
		return DenialAuth
	case "402":
		return DenialQuota
	}
	for _, v := range [...]string{code, status, typ} {
		switch strings.ToLower(v) {
		case "insufficient_quota", "billing_error", "billing_hard_limit_reached", "quotaexceeded", "dailylimitexceeded":
			return DenialQuota
		case "invalid_api_key", "authentication_error", "permission_error", "permission_denied", "unauthenticated", "api_key_invalid":
			return DenialAuth
		}
	}
	return ""
}

// scalar renders a decoded string or number; other values render as "".
func scalar(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	default:
		return ""
	}
}

// transientProviderError reports whether an error envelope says the
// provider was overloaded, rate limited or failing internally — conditions
// where waiting and asking again helps, unlike a bad request or bad key.
func transientProviderError(code, status, typ string) bool {
	if n, err := strconv.Atoi(code); err == nil && (n == 408 || n == 429 || (n >= 500 && n <= 599)) {
		return true
	}
	switch strings.ToUpper(status) {
	case "UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "DEADLINE_EXCEEDED":
		return true
	}
	t := strings.ToLower(typ + " " + code)
	for _, s := range []string{"overloaded", "rate_limit", "server_error", "timeout", "unavailable"} {
		if strings.Contains(t, s) {
			return true
		}
	}
	return false
}
