package config

import (
	"errors"
	"fmt"
)

// ErrInvalid is wrapped by every validation error Load returns, so callers
// can tell a bad config from an unreadable file with errors.Is.
var ErrInvalid = errors.New("config: invalid")

// FieldError is one problem at one path of the config, such as
// "routes[2].timeouts.total: must be positive".
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Is makes every FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func pathErr(path, msg string) error { return &FieldError{Path: path, Msg: msg} }

func pathErrf(path, format string, args ...any) error {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Problems flattens an error returned by Load into its individual
// problems, one per line of `ballast validate` output.
func Problems(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, Problems(e)...)
		}
		return out
	}
	return []error{err}
}
