package validate

import (
	"bytes"
	"errors"
	"math/big"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// inlineSchemaURL is the location an inline schema is compiled under. It has
// no loader, so relative $refs from an inline schema fail at compile time
// instead of reaching the file system.
const inlineSchemaURL = "ballast-inline:///schema.json"

// compileSchema compiles the inline schema text or the schema file (exactly
// one of them is non-empty). Errors are ConfigErrors naming the field and,
// for a schema that breaks the meta-schema, each offending JSON pointer.
func compileSchema(inline, file string) (*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	field, loc := "schema_file", file
	if inline != "" {
		field, loc = "schema", inlineSchemaURL
		doc, err := jsonschema.UnmarshalJSON(strings.NewReader(inline))
		if err != nil {
			return nil, configErr(field, "not JSON: %v", err)
		}
		if err := c.AddResource(inlineSchemaURL, doc); err != nil {
			return nil, configErr(field, "%v", err)
		}
	}
	sch, err := c.Compile(loc)
	if err != nil {
		return nil, configErr(field, "%s", describeCompileError(err))
	}
	return sch, nil
}

// describeCompileError flattens a meta-schema violation into
// "<pointer>: <keyword>: <problem>" lines joined by "; ".
func describeCompileError(err error) string {
	var sve *jsonschema.SchemaValidationError
	if errors.As(err, &sve) {
		var ve *jsonschema.ValidationError
		if errors.As(sve.Err, &ve) {
			leaves := schemaLeaves(ve, nil)
			parts := make([]string, len(leaves))
			for i, l := range leaves {
				parts[i] = describeLeaf(l)
			}
			return "not a valid JSON Schema: " + strings.Join(parts, "; ")
		}
	}
	return err.Error()
}

// checkSchema decodes the body and validates it against the schema.
func checkSchema(sch *jsonschema.Schema, body []byte) *Failure {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fail(CheckJSON, err.Error())
	}
	err = sch.Validate(inst)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return fail(CheckSchema, err.Error())
	}
	leaves := schemaLeaves(ve, nil)
	if len(leaves) == 0 {
		return fail(CheckSchema, err.Error())
	}
	detail := describeLeaf(leaves[0])
	if n := len(leaves) - 1; n > 0 {
		detail += " (and " + strconv.Itoa(n) + " more)"
	}
	return fail(CheckSchema, detail)
}

// schemaLeaves collects, depth first, the errors that have no causes: the
// keyword failures themselves rather than the allOf/$ref wrappers.
func schemaLeaves(ve *jsonschema.ValidationError, dst []*jsonschema.ValidationError) []*jsonschema.ValidationError {
	if len(ve.Causes) == 0 {
		return append(dst, ve)
	}
	for _, c := range ve.Causes {
		dst = schemaLeaves(c, dst)
	}
	return dst
}

// describeLeaf renders one keyword failure as
// "<instance pointer>: <keyword>: <problem>".
func describeLeaf(ve *jsonschema.ValidationError) string {
	ptr := "(root)"
	if len(ve.InstanceLocation) > 0 {
		var sb strings.Builder
		for _, tok := range ve.InstanceLocation {
			sb.WriteByte('/')
			sb.WriteString(strings.ReplaceAll(strings.ReplaceAll(tok, "~", "~0"), "/", "~1"))
		}
		ptr = sb.String()
	}
	keyword := strings.Join(ve.ErrorKind.KeywordPath(), "/")
	msg := kindMessage(ve)
	if keyword == "" || strings.HasPrefix(msg, keyword+":") {
		return ptr + ": " + msg
	}
	return ptr + ": " + keyword + ": " + msg
}

// kindMessage is the library's message for one keyword failure, with the
// numeric bounds spelled as comparisons ("want >= 0").
func kindMessage(ve *jsonschema.ValidationError) string {
	switch k := ve.ErrorKind.(type) {
	case *kind.Minimum:
		return "minimum: got " + ratString(k.Got) + ", want >= " + ratString(k.Want)
	case *kind.Maximum:
		return "maximum: got " + ratString(k.Got) + ", want <= " + ratString(k.Want)
	case *kind.ExclusiveMinimum:
		return "exclusiveMinimum: got " + ratString(k.Got) + ", want > " + ratString(k.Want)
	case *kind.ExclusiveMaximum:
		return "exclusiveMaximum: got " + ratString(k.Got) + ", want < " + ratString(k.Want)
	}
	// The library renders "at '<pointer>': <message>"; render the leaf alone
	// at the root so the prefix is known and can be cut.
	leaf := *ve
	leaf.InstanceLocation = nil
	leaf.Causes = nil
	msg := leaf.Error()
	if rest, ok := strings.CutPrefix(msg, "at '': "); ok {
		return rest
	}
	return msg
}

func ratString(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	if r.IsInt() {
		return r.FloatString(0)
	}
	f, _ := r.Float64()
	return strconv.FormatFloat(f, 'g', -1, 64)
}
