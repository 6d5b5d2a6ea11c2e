package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/ballast-proxy/ballast/config"
	"github.com/ballast-proxy/ballast/proxy"
)

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("c", "", "config file to check (default ./ballast.yaml, else the embedded default)")
	if err := fs.Parse(args); err != nil || strayArgument(fs, "c") {
		return 2
	}
	src := configSource(*file, nil)
	cfg, err := config.Load(src)
	if err == nil {
		err = proxy.Check(cfg) // retry.on words, validators, schemas: what only a running ballast compiles
	}
	if err != nil {
		printProblems(stderr, src.Origin(), err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok (%d routes)\n", src.Origin(), len(cfg.Routes))
	return 0
}
