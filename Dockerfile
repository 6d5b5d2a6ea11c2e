# syntax=docker/dockerfile:1

# Build: the same command as `make build`, so the container runs exactly the
# binary a local build produces.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The context has no .git: the version comes from the build
# (docker build --build-arg VERSION=..., as make docker does).
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ballast ./cmd/ballast

# Run: a static binary on distroless (CA certificates included, no shell),
# as the unprivileged nonroot user.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ballast /ballast
# The embedded default config (/openai/ and /anthropic/ routes). Mount your
# own over it, or mount a directory at /etc/ballast so file-change reloads
# are seen.
COPY config/default.yaml /etc/ballast/ballast.yaml
USER nonroot
# 8080: agents. 9901: admin, which stays on 127.0.0.1 inside the container
# unless admin.token is set and admin.listen is widened
# (BALLAST_ADMIN__TOKEN, BALLAST_ADMIN__LISTEN=0.0.0.0:9901).
EXPOSE 8080 9901
# GETs http://127.0.0.1:9901/healthz from inside the container.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["/ballast", "healthcheck"]
ENTRYPOINT ["/ballast"]
CMD ["run","-c","/etc/ballast/ballast.yaml","--listen","0.0.0.0:8080"]
