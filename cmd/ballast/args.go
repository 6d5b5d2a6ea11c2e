package main

import (
	"flag"
	"fmt"
)

// strayArgument reports, and refuses, a word fs.Parse left over: every
// ballast command takes flags only, and Go's flag package stops at the
// first word that is not one, so the flags after it would be dropped too.
// With suggest set (a flag name such as "c"), the message asks whether the
// word was that flag's value. It prints the message and fs's usage to fs's
// output and reports true when there was a stray word (exit 2).
func strayArgument(fs *flag.FlagSet, suggest string) bool {
	if fs.NArg() == 0 {
		return false
	}
	arg := fs.Arg(0)
	fmt.Fprintf(fs.Output(), "ballast %s: unexpected argument %q", fs.Name(), arg)
	if suggest != "" {
		fmt.Fprintf(fs.Output(), "; did you mean -%s %s?", suggest, arg)
	}
	fmt.Fprintln(fs.Output())
	fs.Usage()
	return true
}
