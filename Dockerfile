# One image for all of jobrun's roles: `jobrun manager`, and (as they arrive)
# the REST server, the runner in job pods and the dev node agent.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY cmd/ cmd/
COPY internal/ internal/
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/jobrun ./cmd/jobrun

# A static binary on distroless: no shell, no package manager, non-root.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/jobrun /jobrun
USER 65532:65532
ENTRYPOINT ["/jobrun"]
CMD ["manager"]
