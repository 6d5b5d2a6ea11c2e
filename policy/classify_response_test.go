package policy

import (
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// Real error payloads, as the providers send them (trimmed only of
// request ids and organisation names).
const (
	openAIRateLimit = `{
    "error": {
        "message": "Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29873, Requested 1234. Please try again in 2.214s. Visit https://platform.openai.com/account/rate-limits to learn more.",
        "type": "tokens",
        "param": null,
        "code": "rate_limit_exceeded"
    }
}`
	openAIRequestsRateLimit = `{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}`
	openAIQuota             = `{
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "type": "insufficient_quota",
        "param": null,
        "code": "insufficient_quota"
    }
}`
	openAIRequestTooLarge = `{"error":{"message":"Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Requested 45123. The input or output tokens must be reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}`
	openAIInvalidKey      = `{
    "error": {
        "message": "Incorrect API key provided: sk-abc123. You can find your API key at https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error",
        "param": null,
        "code": "invalid_api_key"
    }
}`
	openAIRegion       = `{"error":{"code":"unsupported_country_region_territory","message":"Country, region, or territory not supported","param":null,"type":"request_forbidden"}}`
	openAIBadRequest   = `{"error":{"message":"Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.","type":"invalid_request_error","param":"messages","code":"empty_array"}}`
	openAIModelMissing = `{"error":{"message":"The model ` + "`gpt-5-turbo`" + ` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}`
	openAIServerError  = `{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}`
	openAIOverloaded   = `{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","param":null,"code":null}}`
	openAIBillingLimit = `{"error":{"code":"billing_hard_limit_reached","message":"Billing hard limit has been reached","param":null,"type":"invalid_request_error"}}`

	anthropicRateLimit  = `{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit (https://docs.anthropic.com/en/api/rate-limits); see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase."},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}`
	anthropicOverloaded = `{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":null}`
	anthropicAuth       = `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}`
	anthropicPermission = `{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}`
	anthropicNotFound   = `{"type":"error","error":{"type":"not_found_error","message":"model: claude-3-opus-2024"}}`
	anthropicInvalid    = `{"type":"error","error":{"type":"invalid_request_error","message":"messages: field required"}}`
	anthropicCredit     = `{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}`
	anthropicBilling    = `{"type":"error","error":{"type":"billing_error","message":"There is an issue with your account's billing. Please check your billing settings."}}`
	anthropicTooLarge   = `{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}`
	anthropicAPIError   = `{"type":"error","error":{"type":"api_error","message":"Internal server error"}}`
	anthropicTimeout    = `{"type":"error","error":{"type":"timeout_error","message":"Request timed out"}}`
	googleExhausted     = `{
  "error": {
    "code": 429,
    "message": "Resource has been exhausted (e.g. check quota).",
    "status": "RESOURCE_EXHAUSTED"
  }
}`
	googlePerMinute = `{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
            "quotaValue": "15"
          }
        ]
      },
      {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "27s"}
    ]
  }
}`
	googlePerDay = `{
  "error": {
    "code": 429,
    "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    "status": "RESOURCE_EXHAUSTED",
    "details": [
      {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
          {
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash-exp"},
            "quotaValue": "50"
          }
        ]
      },
      {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"}
    ]
  }
}`
	googleBadKey       = `{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}`
	googleDenied       = `{"error":{"code":403,"message":"Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.","status":"PERMISSION_DENIED"}}`
	googleUnavailable  = `{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}`
	googleDeadline     = `{"error":{"code":504,"message":"Deadline expired before operation could complete.","status":"DEADLINE_EXCEEDED"}}`
	googleInternal     = `{"error":{"code":500,"message":"An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting","status":"INTERNAL"}}`
	googleLegacyRate   = `{"error":{"errors":[{"domain":"usageLimits","reason":"rateLimitExceeded","message":"Rate Limit Exceeded"}],"code":403,"message":"Rate Limit Exceeded"}}`
	googleLegacyUser   = `{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403,"message":"User Rate Limit Exceeded"}}`
	googleLegacyQuota  = `{"error":{"errors":[{"domain":"youtube.quota","reason":"quotaExceeded","message":"The request cannot be completed because you have exceeded your \u003ca href=\"/youtube/v3/getting-started#quota\"\u003equota\u003c/a\u003e."}],"code":403,"message":"The request cannot be completed because you have exceeded your quota."}}`
	googleLegacyDaily  = `{"error":{"errors":[{"domain":"usageLimits","reason":"dailyLimitExceeded","message":"Daily Limit Exceeded"}],"code":403,"message":"Daily Limit Exceeded"}}`
	nginx502           = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
	cloudflare524      = `<!DOCTYPE html><html><head><title>api.example.com | 524: A timeout occurred</title></head><body>...</body></html>`
	mentionsQuotaInMsg = `{"error":{"message":"the word insufficient_quota appears in this message but not as a code","type":"invalid_request_error","code":"bad_param"}}`
)

func TestClassifyResponse(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   Class
	}{
		// Success and redirects.
		{name: "200 ok", status: 200, body: `{"id":"chatcmpl-1"}`, want: OK},
		{name: "204 no content", status: 204, want: OK},
		{name: "101 switching", status: 101, want: OK},
		{name: "304 not modified", status: 304, want: OK},
		{name: "302 redirect", status: 302, want: OK},
		{name: "200 with error-looking body stays ok", status: 200, body: openAIQuota, want: OK},

		// OpenAI.
		{name: "openai 429 tokens rate limit", status: 429, body: openAIRateLimit, want: RateLimited},
		{name: "openai 429 requests rate limit", status: 429, body: openAIRequestsRateLimit, want: RateLimited},
		{name: "openai 429 insufficient_quota is quota", status: 429, body: openAIQuota, want: Quota},
		{name: "openai 429 request larger than the limit", status: 429, body: openAIRequestTooLarge, want: CallerFault},
		{name: "openai 401 invalid_api_key", status: 401, body: openAIInvalidKey, want: Auth},
		{name: "openai 403 region", status: 403, body: openAIRegion, want: Auth},
		{name: "openai 400 invalid request", status: 400, body: openAIBadRequest, want: CallerFault},
		{name: "openai 404 model not found", status: 404, body: openAIModelMissing, want: CallerFault},
		{name: "openai 500 server error", status: 500, body: openAIServerError, want: Transient},
		{name: "openai 503 overloaded", status: 503, body: openAIOverloaded, want: Transient},
		{name: "openai 400 billing hard limit", status: 400, body: openAIBillingLimit, want: Quota},

		// Anthropic.
		{name: "anthropic 429 rate_limit_error", status: 429, body: anthropicRateLimit, want: RateLimited},
		{name: "anthropic 529 overloaded_error", status: 529, body: anthropicOverloaded, want: Transient},
		{name: "anthropic 401 authentication_error", status: 401, body: anthropicAuth, want: Auth},
		{name: "anthropic 403 permission_error", status: 403, body: anthropicPermission, want: Auth},
		{name: "anthropic 404 not_found_error", status: 404, body: anthropicNotFound, want: CallerFault},
		{name: "anthropic 400 invalid_request_error", status: 400, body: anthropicInvalid, want: CallerFault},
		{name: "anthropic 400 credit balance too low is quota", status: 400, body: anthropicCredit, want: Quota},
		{name: "anthropic 402 billing_error", status: 402, body: anthropicBilling, want: Quota},
		{name: "anthropic 413 request_too_large", status: 413, body: anthropicTooLarge, want: CallerFault},
		{name: "anthropic 500 api_error", status: 500, body: anthropicAPIError, want: Transient},
		{name: "anthropic 504 timeout_error", status: 504, body: anthropicTimeout, want: Timeout},
		{name: "anthropic overloaded_error under a 500", status: 500, body: anthropicOverloaded, want: Transient},

		// Google.
		{name: "google 429 resource exhausted", status: 429, body: googleExhausted, want: RateLimited},
		{name: "google 429 per-minute quota id", status: 429, body: googlePerMinute, want: RateLimited},
		{name: "google 429 per-day quota id is quota", status: 429, body: googlePerDay, want: Quota},
		{name: "google 400 API_KEY_INVALID is auth", status: 400, body: googleBadKey, want: Auth},
		{name: "google 403 permission denied", status: 403, body: googleDenied, want: Auth},
		{name: "google 503 unavailable", status: 503, body: googleUnavailable, want: Transient},
		{name: "google 504 deadline exceeded", status: 504, body: googleDeadline, want: Timeout},
		{name: "google 500 internal", status: 500, body: googleInternal, want: Transient},
		{name: "google legacy 403 rateLimitExceeded", status: 403, body: googleLegacyRate, want: RateLimited},
		{name: "google legacy 403 userRateLimitExceeded", status: 403, body: googleLegacyUser, want: RateLimited},
		{name: "google legacy 403 quotaExceeded", status: 403, body: googleLegacyQuota, want: Quota},
		{name: "google legacy 403 dailyLimitExceeded", status: 403, body: googleLegacyDaily, want: Quota},

		// Status alone (no body, as when streamed).
		{name: "400 bare", status: 400, want: CallerFault},
		{name: "401 bare", status: 401, want: Auth},
		{name: "402 bare", status: 402, want: Quota},
		{name: "403 bare", status: 403, want: Auth},
		{name: "404 bare", status: 404, want: CallerFault},
		{name: "405 bare", status: 405, want: CallerFault},
		{name: "407 proxy auth", status: 407, want: Auth},
		{name: "408 request timeout", status: 408, want: Timeout},
		{name: "409 conflict", status: 409, want: CallerFault},
		{name: "413 bare", status: 413, want: CallerFault},
		{name: "421 misdirected", status: 421, want: Transient},
		{name: "422 unprocessable", status: 422, want: CallerFault},
		{name: "425 too early", status: 425, want: Transient},
		{name: "429 bare", status: 429, want: RateLimited},
		{name: "431 headers too large", status: 431, want: CallerFault},
		{name: "499 unknown 4xx", status: 499, want: CallerFault},
		{name: "500 bare", status: 500, want: Transient},
		{name: "501 not implemented", status: 501, want: CallerFault},
		{name: "502 nginx", status: 502, body: nginx502, want: Transient},
		{name: "503 bare", status: 503, want: Transient},
		{name: "504 bare", status: 504, want: Timeout},
		{name: "505 version", status: 505, want: CallerFault},
		{name: "511 network auth", status: 511, want: Auth},
		{name: "520 cloudflare unknown", status: 520, want: Transient},
		{name: "522 cloudflare connect timeout", status: 522, want: Timeout},
		{name: "524 cloudflare timeout", status: 524, body: cloudflare524, want: Timeout},
		{name: "529 bare", status: 529, want: Transient},
		{name: "599 network timeout", status: 599, want: Timeout},

		// Malformed statuses.
		{name: "status 0", status: 0, want: Invalid},
		{name: "status 99", status: 99, want: Invalid},
		{name: "status 600", status: 600, want: Invalid},
		{name: "negative status", status: -1, want: Invalid},
		{name: "malformed status ignores body codes", status: 999, body: openAIQuota, want: Invalid},

		// A body never makes a final status retryable (except 403 above).
		{name: "401 with a rate limit code stays auth", status: 401, body: anthropicRateLimit, want: Auth},
		{name: "400 with an overloaded code stays caller fault", status: 400, body: anthropicOverloaded, want: CallerFault},
		{name: "402 with a rate limit code stays quota", status: 402, body: openAIRateLimit, want: Quota},
		{name: "404 with an auth code becomes auth", status: 404, body: anthropicAuth, want: Auth},

		// Codes are matched as JSON strings, not as words in a message.
		{name: "message mentioning a code", status: 400, body: mentionsQuotaInMsg, want: CallerFault},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			if got := ClassifyResponse(tt.status, nil, body); got != tt.want {
				t.Errorf("ClassifyResponse(%d) = %v, want %v", tt.status, got, tt.want)
			}
			var h fasthttp.ResponseHeader
			h.SetStatusCode(tt.status)
			h.SetContentType("application/json")
			if got := ClassifyResponse(tt.status, &h, body); got != tt.want {
				t.Errorf("ClassifyResponse(%d, header) = %v, want %v", tt.status, got, tt.want)
			}
		})
	}
}

func TestClassifyResponseBodyLimits(t *testing.T) {
	const quotaHead = `{"error":{"type":"insufficient_quota"`
	tests := []struct {
		name     string
		body     string
		encoding string
		want     Class
	}{
		{name: "code ending at the scan limit", body: strings.Repeat(" ", BodyScanLimit-len(quotaHead)) + quotaHead + "}}", want: Quota},
		{name: "code crossing the scan limit is not seen", body: strings.Repeat(" ", BodyScanLimit-len(quotaHead)+1) + quotaHead + "}}", want: RateLimited},
		{name: "compressed body is not inspected", body: openAIQuota, encoding: "gzip", want: RateLimited},
		{name: "identity encoding is inspected", body: openAIQuota, encoding: "identity", want: Quota},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h fasthttp.ResponseHeader
			if tt.encoding != "" {
				h.SetContentEncoding(tt.encoding)
			}
			if got := ClassifyResponse(429, &h, []byte(tt.body)); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// An auth error or an exhausted quota is never retried as if it were
// transient, even when the route lists its status.
func TestQuotaAndAuthNeverRetried(t *testing.T) {
	on, err := ParseRetryOn([]string{"connect-failure", "reset", "timeout", "401", "403", "429", "5xx"})
	if err != nil {
		t.Fatal(err)
	}
	r := Retry{On: on, UnsafeMethods: true}
	tests := []struct {
		name   string
		status int
		body   string
	}{
		{name: "openai insufficient_quota", status: 429, body: openAIQuota},
		{name: "openai invalid_api_key", status: 401, body: openAIInvalidKey},
		{name: "anthropic authentication_error", status: 401, body: anthropicAuth},
		{name: "anthropic permission_error", status: 403, body: anthropicPermission},
		{name: "google per-day quota", status: 429, body: googlePerDay},
		{name: "openai request too large for the limit", status: 429, body: openAIRequestTooLarge},
		{name: "anthropic 402 billing", status: 402, body: anthropicBilling},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cls := ClassifyResponse(tt.status, nil, []byte(tt.body))
			if d := r.Decide(cls, CauseStatus, tt.status, []byte("POST"), true); d != DecisionFinal {
				t.Errorf("class %v: Decide = %v, want final", cls, d)
			}
		})
	}
}
