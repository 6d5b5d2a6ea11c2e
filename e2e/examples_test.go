package e2e

import (
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ballast-proxy/ballast/config"
	"go.yaml.in/yaml/v3"
)

const examplesDir = "../examples"

// exampleEnv provides the ${NAME} references the examples use.
var exampleEnv = []string{"SEARCH_API_KEY=e2e-search-key", "ADMIN_TOKEN=e2e-admin-token"}

// TestExampleConfigsLoad: every ballast.yaml under examples/ loads as
// `ballast run -c` would load it.
func TestExampleConfigsLoad(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join(examplesDir, "*", "ballast.yaml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("example configs: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(filepath.Dir(f)), func(t *testing.T) {
			if _, err := config.Load(config.Source{File: f, Environ: exampleEnv}); err != nil {
				t.Fatalf("config.Load(%s): %v", f, err)
			}
		})
	}
}

// loadExample reads an example config with its upstreams replaced, so the
// test can run it against loopback servers.
func loadExample(t *testing.T, name string, upstreams map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir, name, "ballast.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for from, to := range upstreams {
		if !strings.Contains(s, from) {
			t.Fatalf("%s has no upstream %s", name, from)
		}
		s = strings.ReplaceAll(s, from, to+"/")
	}
	return s
}

// TestExampleAgentModelsConfigRuns runs the agent-models example, its
// upstreams replaced by the fakes, with both SDKs through it.
func TestExampleAgentModelsConfigRuns(t *testing.T) {
	t.Parallel()
	oa := newFakeOpenAI(status(503, openAIOverBody))
	an := newFakeAnthropic(status(529, anthropicOverloadedBody))
	b := startBallast(t, nil, loadExample(t, "agent-models", map[string]string{
		"https://api.openai.com/":    serve(t, oa),
		"https://api.anthropic.com/": serve(t, an),
	}))
	checkOutcome(t, openAICalls[1].run(testContext(t), newOpenAI(t, b)), apiOutcome{}, openAIErrorOf)
	checkOutcome(t, anthropicCalls[1].run(testContext(t), newAnthropic(t, b)), apiOutcome{}, anthropicErrorOf)
	if oa.script.hits.Load() != 2 || an.script.hits.Load() != 2 {
		t.Fatalf("upstream hits: openai %d, anthropic %d; want 2 each (one retry)", oa.script.hits.Load(), an.script.hits.Load())
	}
}

// TestExampleMCPConfigRuns runs the MCP example against a go-sdk server.
func TestExampleMCPConfigRuns(t *testing.T) {
	t.Parallel()
	up := newMCPUpstream(t)
	b := startBallast(t, nil, loadExample(t, "mcp", map[string]string{"http://127.0.0.1:3000/": serve(t, up)}))
	c, err := connectMCP(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if sum, err := callAdd(testContext(t), c.session, 1, 2); err != nil || sum != 3 {
		t.Fatalf("add(1, 2) = %d, %v", sum, err)
	}
	if err := c.session.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestExampleHTTPToolConfigRuns runs the http-tool example: the search
// route by base URL with the key injected, the lookup route by HTTP_PROXY.
func TestExampleHTTPToolConfigRuns(t *testing.T) {
	t.Parallel()
	search, lookup := &toolUpstream{}, &toolUpstream{}
	yaml := loadExample(t, "http-tool", map[string]string{
		"https://search.example.com/v2/": serve(t, search) + "/v2",
		"http://10.0.0.7:7000/":          serve(t, lookup),
	})
	yaml = strings.ReplaceAll(yaml, "${SEARCH_API_KEY}", "e2e-search-key") // startBallast passes no environment
	b := startBallast(t, nil, yaml)
	resp, err := httpClient(t).Get(b.base + "/search/query?q=ballast")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || body != `{"path":"/v2/query","query":"q=ballast"}` {
		t.Fatalf("search: %d %s", resp.StatusCode, body)
	}
	if got := search.requests()[0].Header.Get("Authorization"); got != "Bearer e2e-search-key" {
		t.Fatalf("the search tool got Authorization %q", got)
	}
	resp, err = proxyClient(t, b).Get("http://tools.internal/lookup?id=7")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || body != `{"path":"/lookup","query":"id=7"}` {
		t.Fatalf("lookup: %d %s", resp.StatusCode, body)
	}
}

// cli is what the ballast binary accepts: its subcommands and the flags of
// each, read from cmd/ballast's source so the manifests are checked
// against the real CLI.
type cli struct {
	commands map[string]bool
	bench    map[string]bool            // the subcommands of bench
	flags    map[string]map[string]bool // by source file: run.go, healthcheck.go, bench.go
}

var (
	caseRE = regexp.MustCompile(`case "([a-z-]+)"`)
	flagRE = regexp.MustCompile(`fs\.(?:String|Bool|Int|Int64|Duration|Float64)(?:Var)?\((?:&[\w.]+, )?"([\w-]+)"`)
)

func readCLI(t *testing.T) cli {
	t.Helper()
	c := cli{commands: map[string]bool{}, bench: map[string]bool{}, flags: map[string]map[string]bool{}}
	main, err := os.ReadFile("../cmd/ballast/main.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range caseRE.FindAllSubmatch(main, -1) {
		c.commands[string(m[1])] = true
	}
	for _, f := range []string{"run.go", "healthcheck.go", "bench.go"} {
		src, err := os.ReadFile("../cmd/ballast/" + f)
		if err != nil {
			t.Fatal(err)
		}
		c.flags[f] = map[string]bool{}
		if f == "bench.go" {
			for _, m := range caseRE.FindAllSubmatch(src, -1) {
				c.bench[string(m[1])] = true
			}
		}
		for _, m := range flagRE.FindAllSubmatch(src, -1) {
			c.flags[f][string(m[1])] = true
		}
	}
	return c
}

// check asserts that args (without the binary) name a real subcommand and
// only its real flags, and returns the flag values.
func (c cli) check(t *testing.T, where string, args []string) map[string]string {
	t.Helper()
	if len(args) == 0 || !c.commands[args[0]] {
		t.Fatalf("%s: %q is not a ballast command", where, args)
	}
	file := map[string]string{"run": "run.go", "healthcheck": "healthcheck.go", "bench": "bench.go"}[args[0]]
	if file == "" {
		t.Fatalf("%s: no flag check for command %q", where, args[0])
	}
	vals := map[string]string{}
	rest := args[1:]
	if args[0] == "bench" {
		if len(rest) == 0 || !c.bench[rest[0]] {
			t.Fatalf("%s: %q is not a bench command", where, args)
		}
		rest = rest[1:]
	}
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if !strings.HasPrefix(a, "-") {
			t.Fatalf("%s: stray argument %q in %q", where, a, args)
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !c.flags[file][name] {
			t.Fatalf("%s: ballast %s has no flag -%s", where, args[0], name)
		}
		if !hasVal && i+1 < len(rest) {
			i++
			val = rest[i]
		}
		vals[name] = val
	}
	return vals
}

func port(t *testing.T, hostport string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatalf("%q: %v", hostport, err)
	}
	return p
}

// checkBaseURL asserts that an agent's base URL reaches ballast's listener
// (host as given, the listen port) and starts with a route's prefix.
func checkBaseURL(t *testing.T, cfg *config.Config, host, raw string) {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%q: %v", raw, err)
	}
	if u.Hostname() != host || u.Port() != port(t, cfg.Listen) {
		t.Errorf("%s does not reach ballast at %s:%s", raw, host, port(t, cfg.Listen))
	}
	for _, r := range cfg.Routes {
		if strings.HasPrefix(u.Path+"/", r.Match.PathPrefix) {
			return
		}
	}
	t.Errorf("%s matches no route of the config", raw)
}

func TestExampleDockerCompose(t *testing.T) {
	t.Parallel()
	c := readCLI(t)
	dir := filepath.Join(examplesDir, "docker-compose")
	raw, err := os.ReadFile(filepath.Join(dir, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	type service struct {
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Volumes     []string          `yaml:"volumes"`
		Environment map[string]string `yaml:"environment"`
		Healthcheck struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
		Build *struct {
			Context string `yaml:"context"`
		} `yaml:"build"`
	}
	var compose struct {
		Services map[string]service `yaml:"services"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	bal, ok := compose.Services["ballast"]
	if !ok || compose.Services["agent"].Image == "" || compose.Services["upstream"].Image == "" {
		t.Fatalf("want services ballast, agent and upstream: %+v", compose.Services)
	}
	if bal.Build == nil {
		t.Fatal("the ballast service is not built from the repository")
	}
	if _, err := os.Stat(filepath.Join(dir, bal.Build.Context, "Dockerfile")); err != nil {
		t.Fatalf("build context: %v", err)
	}

	flags := c.check(t, "ballast.command", bal.Command)
	cfgPath := flags["c"]
	var file string
	for _, v := range bal.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && strings.HasPrefix(cfgPath, strings.TrimSuffix(parts[1], "/")+"/") {
			file = filepath.Join(dir, parts[0], strings.TrimPrefix(cfgPath, parts[1]))
		}
	}
	if file == "" {
		t.Fatalf("-c %s is not on a mounted volume: %v", cfgPath, bal.Volumes)
	}
	cfg, err := config.Load(config.Source{File: file, Environ: exampleEnv})
	if err != nil {
		t.Fatalf("the sidecar's config %s: %v", file, err)
	}

	hc := bal.Healthcheck.Test
	if len(hc) < 3 || hc[0] != "CMD" || hc[1] != "/ballast" {
		t.Fatalf("healthcheck %q: want [CMD /ballast healthcheck ...]", hc)
	}
	if got := c.check(t, "ballast.healthcheck", hc[2:])["admin"]; got != "" && got != cfg.Admin.Listen {
		t.Errorf("healthcheck --admin %s, but the admin listens on %s", got, cfg.Admin.Listen)
	}
	for name, v := range compose.Services["agent"].Environment {
		if strings.HasSuffix(name, "_URL") {
			checkBaseURL(t, cfg, "ballast", v)
		}
	}

	up := compose.Services["upstream"]
	upFlags := c.check(t, "upstream.command", up.Command)
	upPort := port(t, upFlags["listen"])
	found := false
	for _, r := range cfg.Routes {
		if u, err := url.Parse(r.Upstream); err == nil && u.Hostname() == "upstream" {
			found = true
			if u.Port() != upPort {
				t.Errorf("route %s goes to port %s, the upstream service listens on %s", r.Name, u.Port(), upPort)
			}
		}
	}
	if !found {
		t.Error("no route goes to the upstream service")
	}
}

func TestExampleKubernetesPod(t *testing.T) {
	t.Parallel()
	c := readCLI(t)
	raw, err := os.ReadFile(filepath.Join(examplesDir, "kubernetes", "pod.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]map[string]any{} // by kind
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	for {
		var d map[string]any
		if err := dec.Decode(&d); err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("pod.yaml: %v", err)
		}
		docs[fmt.Sprint(d["kind"])] = d
	}
	for _, kind := range []string{"Secret", "ConfigMap", "Pod"} {
		if docs[kind] == nil {
			t.Fatalf("pod.yaml has no %s", kind)
		}
	}
	var pod struct {
		Spec struct {
			InitContainers []k8sContainer `yaml:"initContainers"`
			Containers     []k8sContainer `yaml:"containers"`
			Volumes        []struct {
				Name      string         `yaml:"name"`
				ConfigMap map[string]any `yaml:"configMap"`
				EmptyDir  map[string]any `yaml:"emptyDir"`
				PVC       map[string]any `yaml:"persistentVolumeClaim"`
			} `yaml:"volumes"`
		} `yaml:"spec"`
	}
	remarshal(t, docs["Pod"], &pod)

	var sidecar, agent *k8sContainer
	for i, ct := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
		switch ct.Name {
		case "ballast":
			sidecar = &append(pod.Spec.InitContainers, pod.Spec.Containers...)[i]
		case "agent":
			agent = &append(pod.Spec.InitContainers, pod.Spec.Containers...)[i]
		}
	}
	if sidecar == nil || agent == nil {
		t.Fatal("want containers ballast and agent")
	}
	flags := c.check(t, "ballast.args", sidecar.Args)

	// The config comes from the ConfigMap mounted where -c points.
	cmName := fmt.Sprint(mapPath(docs["ConfigMap"], "metadata", "name"))
	var cfgText string
	for _, m := range sidecar.VolumeMounts {
		if !strings.HasPrefix(flags["c"], m.MountPath+"/") {
			continue
		}
		for _, v := range pod.Spec.Volumes {
			if v.Name == m.Name && fmt.Sprint(v.ConfigMap["name"]) == cmName {
				key := strings.TrimPrefix(flags["c"], m.MountPath+"/")
				cfgText, _ = mapPath(docs["ConfigMap"], "data", key).(string)
			}
		}
	}
	if cfgText == "" {
		t.Fatalf("-c %s is not a key of ConfigMap %s mounted in the ballast container", flags["c"], cmName)
	}

	// ${ADMIN_TOKEN} comes from the Secret.
	secret := fmt.Sprint(mapPath(docs["Secret"], "metadata", "name"))
	var env []string
	for _, e := range sidecar.Env {
		if e.ValueFrom.SecretKeyRef.Name != "" {
			if e.ValueFrom.SecretKeyRef.Name != secret || mapPath(docs["Secret"], "stringData", e.ValueFrom.SecretKeyRef.Key) == nil {
				t.Errorf("env %s refers to %s/%s, which pod.yaml does not define", e.Name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
			}
			env = append(env, e.Name+"=from-secret")
		}
	}
	cfg, err := config.Parse([]byte(cfgText), config.Source{File: "pod.yaml ConfigMap", Environ: env})
	if err != nil {
		t.Fatalf("the ConfigMap's config: %v", err)
	}
	if cfg.Admin.Token != "from-secret" {
		t.Errorf("admin.token %q: want it from the Secret", cfg.Admin.Token)
	}

	// The kubelet probes the pod IP: the admin listener must not be
	// loopback-only, and readiness is /readyz on its port.
	if host, _, _ := net.SplitHostPort(cfg.Admin.Listen); host == "127.0.0.1" || host == "localhost" {
		t.Errorf("admin.listen %s is loopback-only: the kubelet's httpGet probe cannot reach it", cfg.Admin.Listen)
	}
	rp := sidecar.ReadinessProbe.HTTPGet
	if rp.Path != "/readyz" || fmt.Sprint(rp.Port) != port(t, cfg.Admin.Listen) {
		t.Errorf("readiness probe %s on port %v; want /readyz on the admin port %s", rp.Path, rp.Port, port(t, cfg.Admin.Listen))
	}
	lp := sidecar.LivenessProbe.Exec.Command
	if len(lp) < 2 || lp[0] != "/ballast" {
		t.Fatalf("liveness probe %q: want /ballast healthcheck", lp)
	}
	if admin := c.check(t, "liveness", lp[1:])["admin"]; admin != "" && port(t, admin) != port(t, cfg.Admin.Listen) {
		t.Errorf("liveness --admin %s, the admin listens on %s", admin, cfg.Admin.Listen)
	}
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil || !bytes.Contains(dockerfile, []byte(" /ballast\n")) {
		t.Errorf("the image does not hold /ballast (Dockerfile: %v)", err)
	}

	// The file state backend lives on a writable volume.
	if cfg.State.Backend != "file" {
		t.Fatalf("state.backend %q, want file on the state volume", cfg.State.Backend)
	}
	onVolume := false
	for _, m := range sidecar.VolumeMounts {
		if strings.HasPrefix(cfg.State.Path, m.MountPath+"/") && !m.ReadOnly {
			for _, v := range pod.Spec.Volumes {
				onVolume = onVolume || v.Name == m.Name && (v.EmptyDir != nil || v.PVC != nil)
			}
		}
	}
	if !onVolume {
		t.Errorf("state.path %s is not on a writable volume of the ballast container", cfg.State.Path)
	}

	for _, e := range agent.Env {
		if strings.HasSuffix(e.Name, "_BASE_URL") {
			checkBaseURL(t, cfg, "127.0.0.1", e.Value)
		}
	}
}

type k8sContainer struct {
	Name string   `yaml:"name"`
	Args []string `yaml:"args"`
	Env  []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom struct {
			SecretKeyRef struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	ReadinessProbe struct {
		HTTPGet struct {
			Path string `yaml:"path"`
			Port any    `yaml:"port"`
		} `yaml:"httpGet"`
	} `yaml:"readinessProbe"`
	LivenessProbe struct {
		Exec struct {
			Command []string `yaml:"command"`
		} `yaml:"exec"`
	} `yaml:"livenessProbe"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

func remarshal(t *testing.T, in any, out any) {
	t.Helper()
	b, err := yaml.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
}

func mapPath(m map[string]any, keys ...string) any {
	var cur any = m
	for _, k := range keys {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[k]
	}
	return cur
}
