package main

import (
	"runtime/debug"
	"testing"
)

func TestBuildVersion(t *testing.T) {
	const rev = "3a82ca8c8e669a27b3a942b4ba89c38a818dd936"
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	tests := []struct {
		name string
		info debug.BuildInfo
		want string
	}{
		{name: "module version", info: debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: vcs("false")}, want: "v1.2.3"},
		{name: "pseudo-version", info: debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261127050008-3a82ca8c8e66+dirty"}}, want: "v0.0.0-20261127050008-3a82ca8c8e66+dirty"},
		{name: "revision", info: debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("false")}, want: "3a82ca8c8e66"},
		{name: "modified revision", info: debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("true")}, want: "3a82ca8c8e66-dirty"},
		{name: "short revision", info: debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}}}, want: "abc"},
		{name: "nothing recorded", info: debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, want: ""},
		{name: "zero value", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := buildVersion(&tt.info); got != tt.want {
				t.Errorf("buildVersion = %q, want %q", got, tt.want)
			}
		})
	}
}
