// OHIF v3 configuration for deploy/docker-compose.yml: one DICOMweb data source, Orthanc,
// reached through this same nginx (deploy/ohif/default.conf.template proxies /dicom-web and
// /wado to http://orthanc:8042), so the browser sees one origin and Orthanc needs no CORS.
// nodestage's results (SEG, SR, the summary SC) arrive in the same study; open the study and
// load the SEG series to see the staged nodes.
// The one OHIF configuration: `nodestage demo --viewer` and the viewer tests serve this file too
// (dicomnode/app/viewer.py, same-origin proxy in place of nginx; tests/integration/test_viewer_ohif.py).
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  disableConfirmationPrompts: true,
  investigationalUseDialog: { option: 'never' },
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  maxNumberOfWebWorkers: 3,
  httpErrorHandler: error => {
    console.warn('DICOMweb request failed', error.status);
  },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (PACS)',
        name: 'orthanc',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        wadoUriRoot: '/wado',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true },
      },
    },
  ],
};
