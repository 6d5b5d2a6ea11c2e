package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// How a drain ended decides the log line and the exit code: the clock
// running out is a warning and exit 0 (documented: ballast exits anyway);
// a failure to close (here, a state store's) is an error and exit 1,
// never reported as a drain that took too long.
func TestReportShutdown(t *testing.T) {
	closeFailed := fmt.Errorf("store: final flush: %w", errors.New("file too large"))
	for _, tc := range []struct {
		name     string
		err      error
		wantCode int
		wantLog  string // "" for no line
		noLog    string
	}{
		{name: "clean", err: nil, wantCode: 0},
		{name: "out of time", err: context.DeadlineExceeded, wantCode: 0,
			wantLog: `"level":"WARN","msg":"drain did not finish in time; exiting"`},
		{name: "cut short", err: fmt.Errorf("drain: %w", context.Canceled), wantCode: 0,
			wantLog: `"msg":"drain did not finish in time; exiting"`},
		{name: "the store failed to close", err: closeFailed, wantCode: 1,
			wantLog: `"level":"ERROR","msg":"shutdown failed; exiting","error":"store: final flush: file too large"`,
			noLog:   "did not finish in time"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&buf, nil))
			if code := reportShutdown(log, tc.err); code != tc.wantCode {
				t.Errorf("exit code %d, want %d", code, tc.wantCode)
			}
			got := buf.String()
			switch {
			case tc.wantLog == "" && got != "":
				t.Errorf("logged %q, want nothing", got)
			case !strings.Contains(got, tc.wantLog):
				t.Errorf("logged %q, want it to contain %q", got, tc.wantLog)
			case tc.noLog != "" && strings.Contains(got, tc.noLog):
				t.Errorf("logged %q, which must not say %q", got, tc.noLog)
			}
		})
	}
}
